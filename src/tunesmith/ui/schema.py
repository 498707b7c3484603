"""The request body of `POST /api/judgements` (the review app), as a strict pydantic model like the
bodies `serve` takes (serve/api_schema.py).

Why a schema before the store's own checks: the store built a Judgement from the JSON first and
checked it after, so a body missing `reviewer` or `kind` was a TypeError (a 500), and an item id
of 10^23 overflowed SQLite's integer (another 500); 3 of 9 simple bodies did that. Here every field
has its type, length and range, an unknown field is named, and each problem is a 400 that names
the field. Whether the item exists, and whether a label is one of its outputs, is the store's
check (store.check: 404/400), since only the registry knows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tunesmith.review.store import KINDS, MAX_TEXT, Judgement
from tunesmith.serve.api_schema import Text

SQLITE_MAX_INT = 2**63 - 1
Label = Annotated[Text, Field(min_length=1, max_length=200)]


class JudgementBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    item: Annotated[StrictInt, Field(ge=1, le=SQLITE_MAX_INT)]
    reviewer: Annotated[Text, Field(min_length=1, max_length=100)]
    kind: Literal[KINDS]  # type: ignore[valid-type]  # ab, rating, correction
    left: Label | None = None
    right: Label | None = None
    choice: Label | None = None
    label: Label | None = None
    rating: Annotated[StrictInt, Field(ge=1, le=5)] | None = None
    tags: Annotated[list[Annotated[Text, Field(max_length=40)]], Field(max_length=20)] = []
    comment: Annotated[Text, Field(max_length=MAX_TEXT)] | None = None
    text: Annotated[Text, Field(max_length=MAX_TEXT)] | None = None

    def judgement(self) -> Judgement:
        return Judgement(**self.model_dump())


MODELS = (JudgementBody,)
