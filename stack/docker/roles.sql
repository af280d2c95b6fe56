-- The docker stack's Postgres roles (the local stack's are made by stack/postgres.py):
-- checkout_app may read, insert and update orders; checkout_probe (the money probe) may
-- only read them. Run by postgres-entrypoint.sh with the passwords in its environment.
\getenv app_pw CC_APP_PW
\getenv probe_pw CC_PROBE_PW
REVOKE ALL ON DATABASE checkout FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON orders FROM PUBLIC;
CREATE ROLE checkout_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_pw';
CREATE ROLE checkout_probe LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'probe_pw';
GRANT CONNECT ON DATABASE checkout TO checkout_app, checkout_probe;
GRANT USAGE ON SCHEMA public TO checkout_app, checkout_probe;
GRANT SELECT, INSERT, UPDATE ON orders TO checkout_app;
GRANT SELECT ON orders TO checkout_probe;
