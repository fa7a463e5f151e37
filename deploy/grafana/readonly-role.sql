-- A read-only role for Grafana: it reads the dashboard views and the tables under them.
CREATE ROLE grafana LOGIN PASSWORD 'grafana';
GRANT CONNECT ON DATABASE tunectl TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE tunectl IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
