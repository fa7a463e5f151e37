"""Bearer tokens: each configured by its SHA-256 (never the token), scoped to one project.

A token sees and touches only its own project's jobs: another project's job is answered
exactly like a job that does not exist (404). An admin token also sees every project and
reads the operator endpoints (/metrics). No token, or an unknown one, is 401.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.config import ApiToken

#: Tokens tunectl hands out start with this, so a leaked one is easy to recognise.
TOKEN_PREFIX = "tcl_"

_bearer = HTTPBearer(auto_error=False, description="An API token (`tunectl api-token`).")


def hash_token(token: str) -> str:
    """The SHA-256 a token is configured by (tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name and project, and whether it is an admin's."""

    name: str
    project: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The project whose jobs it may see; None for every project (admin)."""
        return None if self.admin else self.project


def find(tokens: list[ApiToken], presented: str) -> ApiToken | None:
    """The configured token ``presented`` is, compared in constant time."""
    digest = hash_token(presented)
    match = None
    for token in tokens:
        if hmac.compare_digest(token.sha256, digest):
            match = token
    return match


def caller(request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
           ) -> Caller:
    """The dependency every job route takes: 401 without a valid token."""
    token = find(request.app.state.api.settings.api_tokens,
                 credentials.credentials) if credentials else None
    if token is None:
        raise HTTPException(401, "a valid API token is required: send `Authorization: Bearer "
                                 "<token>` (`tunectl api-token` makes one)",
                            headers={"WWW-Authenticate": "Bearer"})
    return Caller(token.name, token.project, token.admin)


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """The dependency of operator endpoints: 403 for a project token."""
    if not who.admin:
        raise HTTPException(403, f"token {who.name!r} is not an admin token; operator "
                                 "endpoints need one (\"admin\": true in TUNECTL_API_TOKENS)")
    return who
