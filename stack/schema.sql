-- The orders table: the one schema of the stack. Read by stack/postgres.py (local `stack up`),
-- by checkout itself when it finds no table (stack/services/checkout.py) and copied into
-- the docker Postgres image (stack/docker/Dockerfile.postgres, run by its entrypoint).
CREATE TABLE IF NOT EXISTS orders (
    order_ref uuid PRIMARY KEY,
    items jsonb NOT NULL,
    amount_cents int NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
