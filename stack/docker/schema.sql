CREATE TABLE IF NOT EXISTS orders (
    order_ref uuid PRIMARY KEY,
    items jsonb NOT NULL,
    amount_cents int NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
