"""Request and response bodies (pydantic): they validate input and make the OpenAPI schema (/docs).

Types are strict: an item id is a JSON integer, a title a JSON string, `k` an integer and
`exclude_history` a boolean; `"5"` for `k`, `1.0` for an id or unknown keys are 422 errors."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

HistoryEntry = Union[StrictInt, StrictStr]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": [12, 7, "Stapler"], "k": 5, "exclude_history": False}]})

    history: list[HistoryEntry] = Field(
        description="the user's items, oldest first: item ids (integers) or exact catalogue titles (strings); "
                    "at most max_history entries (see /info)")
    k: Optional[StrictInt] = Field(None, description="how many ranks to return, 1..num_beams (default num_beams)")
    exclude_history: StrictBool = Field(False, description="leave the history's items out of the answer "
                                                           "(a rank left with no item is dropped)")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"users": [{"history": [12, 7], "k": 3}, {"history": ["Stapler"], "k": 3}]}]})

    users: list[RecommendRequest] = Field(description="one entry per user, at most max_request_users (see /info)")


class RankedItem(BaseModel):
    rank: int = Field(description="0 for the best, as in `bearrec recommend --json`")
    item_id: int = Field(description="the smallest item id with this title")
    items: list[int] = Field(description="every item id with this title (several where titles are duplicated)")
    title: str
    score: float = Field(description="the beam search's sequence score (log-probability / length ** lp)")


class ModelIdentity(BaseModel):
    model: str = Field(description="--model as given: a run directory, a model folder, a hub id or smollm2-135m")
    run_dir: Optional[str] = Field(description="the run directory's absolute path, when --model is one")
    config_hash: str = Field(description="hash of the served config (as bearrec.rundir.config_hash computes it)")
    dataset: str


class UserRecommendations(BaseModel):
    history: list[int] = Field(description="the history as item ids (a title becomes its smallest id)")
    recommendations: list[RankedItem]


class RecommendResponse(UserRecommendations):
    model: ModelIdentity


class BatchResponse(BaseModel):
    results: list[UserRecommendations] = Field(description="one per user, in the request's order")
    model: ModelIdentity


class ErrorDetail(BaseModel):
    status: int
    field: Optional[str] = Field(description="the offending field, e.g. `history.2` or `users.0.k`; null when "
                                             "the request as a whole is refused")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    errors: list[ErrorDetail] = Field(default_factory=list, description="every problem found (validation errors)")
