-- Run by the postgres image on its first start (an empty data volume): one database per server.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
