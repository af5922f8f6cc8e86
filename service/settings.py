"""Every setting of `lensdb serve`, declared once with its help text.

Layered: defaults here → ``LENSDB_*`` environment variables → ``lensdb serve`` flags (generated from these
fields, so the help text lives only here).
"""

import ipaddress
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LENSDB_")

    db: Path = Field(Path("lens.duckdb"), description="store file the service owns (created if missing)")
    host: str = Field("127.0.0.1", description="interface to listen on; anything but loopback needs a token")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    sql_timeout_s: float = Field(10.0, gt=0, description="seconds before a POST /sql query is stopped")
    sql_max_rows: int = Field(1000, ge=1, description="most rows POST /sql returns (truncated is set beyond)")
    page_limit: int = Field(200, ge=1, description="largest limit any list endpoint accepts")
    watch_every: str = Field("", description="re-scan registered models this often (30s, 10m, 2h) and index new "
                             "checkpoints through the job queue; empty: off")
    watch_settle_s: float = Field(60.0, ge=0, description="the watcher indexes only folders whose files are at "
                                  "least this many seconds old")
    token: str = Field("", description="access token: when set, every request needs 'Authorization: Bearer "
                       "TOKEN' (pages: open one once with ?access_token=TOKEN); empty: off")
    warm: bool = Field(True, description="at start and after each index job, load what token lookups read into "
                       "memory in the background (vocabularies, token-sorted tables): lookups then skip first "
                       "reads; costs about 1 s and the store's size in memory per 100 M token rows")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body accepted; larger ones get 413")
    memory_limit: str = Field("", description="most memory DuckDB may take in the service, for every query "
                              "(POST /sql included) and write: a query past it that cannot spill is refused with a "
                              "problem and the service keeps answering (e.g. 4GB); empty: half of this machine's "
                              "memory")
    threads: int | None = Field(None, ge=1, description="DuckDB threads of the service; default: one per core")
    temp_directory: str = Field("", description="where DuckDB spills what does not fit in memory_limit; empty: "
                                "DB.tmp next to the store")
    max_temp_directory_size: str = Field("8GB", description="most spill space a query may use before it is "
                                         "refused")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings) -> str | None:
    """Why these settings must not be served: a non-loopback address without a token; None when fine."""
    if is_loopback(settings.host) or settings.token:
        return None
    return (f"refusing to listen on {settings.host} without a token: anyone who can reach it could read the "
            "store and have the service index folders on this machine. Set --token (or LENSDB_TOKEN), or "
            "listen on 127.0.0.1.")
