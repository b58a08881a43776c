-- Prefect's own database beside MLflow's (the image creates POSTGRES_DB=mlflow).
CREATE DATABASE prefect;
