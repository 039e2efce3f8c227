"""dbt stage: raw tables -> common data model (CDM) through dbt."""
