"""An order pipeline: fan-out and fan-in, retries, an optional step and compensation.

    validate ──┬── reserve_inventory (compensate: release) ──┐
               ├── charge_card (retries; compensate: refund) ─┼── ship ── notify
               └── fraud_check (optional) ────────────────────┘

Failures are decided by the order number, so a run is reproducible: about 8% of card
charges fail once and succeed on retry, 3% of fraud checks fail (optional: the order
still ships), and 1% of shipments fail for good, which refunds the card and releases
the stock (compensation in reverse completion order).
"""

from __future__ import annotations

import time

from orchwf import NonRetryableError, RetryPolicyBuilder, StepBuilder, StepContext, WorkflowBuilder


def _work(seconds: float = 0.001) -> None:
    time.sleep(seconds)  # stands in for an API call


def validate(ctx: StepContext, order: dict) -> dict:
    _work()
    if order.get("amount", 0) <= 0:
        raise NonRetryableError("order amount must be positive")
    return {"validated": True}


def reserve_inventory(ctx: StepContext, data: dict) -> dict:
    _work()
    return {"reservation": f"R-{data['order_no']}"}


def release_inventory(ctx: StepContext, data: dict) -> None:
    _work()


def charge_card(ctx: StepContext, data: dict) -> dict:
    _work()
    if data["order_no"] % 13 == 0 and ctx.attempt == 1:
        raise ConnectionError("payment gateway timeout")
    return {"charge": f"C-{data['order_no']}", "charged": data["amount"]}


def refund_card(ctx: StepContext, data: dict) -> None:
    _work()


def fraud_check(ctx: StepContext, data: dict) -> dict:
    _work()
    if data["order_no"] % 33 == 0:
        raise RuntimeError("fraud service unavailable")
    return {"fraud_score": (data["order_no"] * 7) % 100}


def ship(ctx: StepContext, data: dict) -> dict:
    _work()
    if data["order_no"] % 100 == 99:
        raise NonRetryableError("address cannot be delivered to")
    return {"tracking": f"T-{data['order_no']}"}


def notify(ctx: StepContext, data: dict) -> dict:
    _work()
    return {"notified": data["customer"]}


gateway_retry = (
    RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.2).with_multiplier(2)
    .with_retryable_errors("ConnectionError").build()
)

order_pipeline = (
    WorkflowBuilder("order_pipeline", "Order pipeline")
    .with_description("Validate, reserve, charge and check fraud in parallel, then ship and notify")
    .add_step(StepBuilder("validate", "Validate order", validate).build())
    .add_step(StepBuilder("reserve_inventory", "Reserve inventory", reserve_inventory)
              .with_dependencies("validate").with_compensator(release_inventory).build())
    .add_step(StepBuilder("charge_card", "Charge card", charge_card)
              .with_dependencies("validate").with_retry_policy(gateway_retry)
              .with_compensator(refund_card).with_timeout(10).build())
    .add_step(StepBuilder("fraud_check", "Fraud check", fraud_check)
              .with_dependencies("validate").with_required(False).build())
    .add_step(StepBuilder("ship", "Ship", ship)
              .with_dependencies("reserve_inventory", "charge_card", "fraud_check").build())
    .add_step(StepBuilder("notify", "Notify customer", notify).with_dependencies("ship").build())
    .build()
)


def sample_orders(count: int) -> list[dict]:
    return [{"order_no": i, "amount": 10 + i % 90, "customer": f"customer-{i % 500}"} for i in range(1, count + 1)]
