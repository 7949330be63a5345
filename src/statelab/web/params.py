"""Request parameter types shared by every route: numbers bounded to the columns
they end up in, and strings a database can hold.

FastAPI checks these at the edge, so a bad value is a 422 that names the field
(and is written into the OpenAPI document), never a driver error deep in a store:

- every id, sequence number and count is stored as a 64-bit integer (PostgreSQL
  ``BIGINT``, SQLite ``INTEGER``); a larger one overflows in the driver;
- PostgreSQL's text types cannot hold a NUL character, so no string from a user
  may carry one (``NulFree``), whichever database is behind the replica today.

Body models use the plain types (``Id``, ``Seq``, ``Count``, ``Text``); routes use the
``...Path``/``...Query`` aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

#: The largest value of a 64-bit signed column: ids, sequence numbers, amounts.
INT64_MAX = 2**63 - 1

#: Room and file ids are short random strings; their columns are 32 characters wide.
KEY_MAX_LENGTH = 32

NUL = "\x00"


def refuse_nul(value: str) -> str:
    """``value`` itself; a validation error if it holds a NUL character."""
    if NUL in value:
        raise PydanticCustomError("nul_character", "must not contain a NUL character")
    return value


@dataclass(frozen=True, slots=True)
class NulFree:
    """Annotation for a ``str``: refuse NUL characters, and say so in the JSON schema
    (a pattern, so clients and fuzzers know before they send)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(refuse_nul, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", "^[^\\u0000]*$")
        return json_schema


# ----------------------------------------------------------------- body fields

#: A string from a user that may be stored.
Text = Annotated[str, NulFree()]
#: A row id: positive, within BIGINT.
Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
#: A sequence number (0: before the first message).
Seq = Annotated[int, Field(ge=0, le=INT64_MAX)]
#: A count that may be stored (a quantity; the cart's own rules narrow it further).
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]

# ----------------------------------------------------------- path and query

#: ``/.../{id}`` of an order, a menu item.
IdPath = Annotated[int, Path(ge=1, le=INT64_MAX)]
#: ``/.../{id}`` of a room or a file: a short NUL-free key.
KeyPath = Annotated[str, NulFree(), Path(min_length=1, max_length=KEY_MAX_LENGTH)]
#: ``?order_id=``: an optional reference to a row.
OptionalIdQuery = Annotated[int | None, Query(ge=1, le=INT64_MAX)]
#: ``?after=``: a sequence number to read past.
SeqQuery = Annotated[int, Query(ge=0, le=INT64_MAX)]
