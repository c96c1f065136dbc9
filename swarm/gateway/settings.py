"""The HTTP API's settings, read from `SWARM_API_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from swarm.gateway.auth import Authenticator

_MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_API_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    #: 0 picks a free port (uvicorn prints which).
    port: int = Field(default=8080, ge=0, le=65535)
    #: The bearer token every `/v1` request must carry; wins over `token_file`.
    token: SecretStr | None = None
    #: A file holding the token (what `swarm up` writes), read at start.
    token_file: Path | None = None
    #: The stack's principals (`principals.json`, as `swarm up` writes it and names to its API):
    #: when given, the users' tokens in `api-tokens.json` beside it are taken too, each acting
    #: as its user, signed with the user's key (its seed beside it). Unset: the token above
    #: alone (`swarm.gateway.auth`).
    principals_file: Path | None = None
    #: Serve the OpenAPI document and the interactive docs (`/openapi.json`, `/docs`, `/redoc`)
    #: without the token. Off: they describe every route and model of the API, which is for
    #: the API's users, not for whoever reaches its port.
    public_docs: bool = False
    #: Identity stamped on the commands the API sends for its own token's requests
    #: (CloudEvents extension `identity`); a user's are stamped `user:<name>`.
    identity: str = Field(default="user:api", pattern=r"^(user|service):[A-Za-z0-9._@-]{1,64}$")
    #: How long a command request waits for its outcome unless it says `?timeout=`.
    command_timeout: float = Field(default=10.0, gt=0, le=300)
    #: The largest request body the API reads, in bytes (413 above it). The largest valid
    #: command, a deploy with a 256 KiB inline module (about 342 KiB in base64) and its spec,
    #: is well under the default; NATS' own payload limit (1 MiB by default) caps commands too.
    max_body_bytes: int = Field(default=4 * _MIB, ge=_MIB, le=1024 * _MIB)

    def bearer_token(self) -> str:
        """The configured token; refusing to start without one keeps the API from being open."""
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            text = self.token_file.read_text().strip()
            if text:
                return text
        raise ValueError("no API token: set SWARM_API_TOKEN or SWARM_API_TOKEN_FILE")

    def authenticator(self, token: str | None = None) -> Authenticator:
        """What takes the API's tokens: `token` (else the configured one) and, with the stack's
        principals, the users'. Raises ValueError (or OSError, for the token file) when either
        cannot be read."""
        owner = token if token is not None else self.bearer_token()
        # Imported here: the web stack takes seconds to import, and a missing token is said first.
        from swarm.gateway.auth import Authenticator

        try:
            return Authenticator(owner, self.principals_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"SWARM_API_PRINCIPALS_FILE ({self.principals_file}): cannot read the principals "
                f"or the users' tokens beside them: {exc}"
            ) from None
