"""Routes for admins: changing prices. ``AdminDep`` guards every route here.

The role is granted only from the command line (``statelab admin grant USERNAME``)
and read from SQL on every admin request, so a revoked admin is refused from the
next request on, whichever session placement is in use (no session or token
carries the role). Anonymous callers get 401, other users 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from statelab.domain.errors import Forbidden
from statelab.domain.shop import MAX_PRICE_CENTS
from statelab.state.session import Session
from statelab.web.deps import StoresDep, UserDep
from statelab.web.params import IdPath
from statelab.web.problems import responses
from statelab.web.shop import MenuItemOut, StrictBody

router = APIRouter(prefix="/api/admin", tags=["admin"])


async def get_admin(stores: StoresDep, user: UserDep) -> Session:
    """The caller, who must hold the admin role now (read from SQL)."""
    if not await stores.users.is_admin(user.user_id):
        raise Forbidden("this needs the admin role (granted with `statelab admin grant`)")
    return user


AdminDep = Annotated[Session, Depends(get_admin)]


class NewPrice(StrictBody):
    price_cents: int = Field(
        ge=1, le=MAX_PRICE_CENTS, description=f"Integer cents, 1 to {MAX_PRICE_CENTS}"
    )


@router.put("/menu/{item_id}", responses=responses(404))
async def set_price(
    item_id: IdPath, body: NewPrice, stores: StoresDep, _admin: AdminDep
) -> MenuItemOut:
    """Change an item's price. It is stored in SQL, and the cache placement hears of
    it: ``redis`` serves it to every replica at once, a ``memory`` cache on another
    replica up to ``cache_ttl_seconds`` later."""
    item = await stores.menu.set_price(item_id, body.price_cents)
    return MenuItemOut(id=item.id, name=item.name, kind=item.kind, price_cents=item.price_cents)
