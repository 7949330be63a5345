"""The periodic sales summaries, for admins (``GET /api/admin/reports``).

Each row is one run of the periodic work (``state/timers.py``): with
``timers=inprocess`` every replica writes its own row each period, with
``timers=scheduler`` one worker writes one row a period.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from statelab.web.admin import AdminDep
from statelab.web.deps import StoresDep

router = APIRouter(prefix="/api/admin", tags=["admin"])

#: The most rows one answer lists.
MAX_REPORTS = 1000


class Report(BaseModel):
    period: int = Field(
        description="The run's period, floor(period start / period_seconds) in unix time; "
        "the run starts with the period"
    )
    period_seconds: int
    ran_by: str = Field(description="The replica (timers=inprocess) or worker that ran it")
    orders: int = Field(description="Orders paid during the period before this one")
    revenue_cents: int = Field(description="What those orders cost, in cents")
    created_at: float = Field(description="When the row was written (unix seconds)")


class Reports(BaseModel):
    reports: list[Report]


@router.get("/reports")
async def reports(
    stores: StoresDep,
    _admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=MAX_REPORTS)] = 200,
) -> Reports:
    """The newest sales summaries, newest period first (admins only)."""
    found = await stores.timers.work.reports(limit)
    return Reports(reports=[Report.model_validate(r, from_attributes=True) for r in found])
