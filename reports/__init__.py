"""Reports from MLflow alone: collect -> DataFrames -> summary tables -> plots -> report.md.

Every function past ``collect`` takes DataFrames, so it is testable on synthetic data.
"""
