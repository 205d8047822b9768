"""Type stubs of the `tally` extension module (docs/EMBEDDING.md has the reference)."""

from os import PathLike
from typing import Callable, Final, Optional, Union

__version__: str

_Path = Union[str, "PathLike[str]"]

OK: Final[int]  # 0x00000000
BELOW_THRESHOLD: Final[int]  # 0x47A10001
MALFORMED_REQUEST: Final[int]  # 0xC7A10001
UNSUPPORTED_VERSION: Final[int]  # 0xC7A10002
UNKNOWN_EDITION: Final[int]  # 0xC7A10003
EDITION_NOT_COVERED: Final[int]  # 0xC7A10004
POOL_MISMATCH: Final[int]  # 0xC7A10005
HOST_BUSY: Final[int]  # 0xC7A10006
STORAGE_FAILURE: Final[int]  # 0xC7A10007
FRAME_TOO_LARGE: Final[int]  # 0xC7A10008
CLONE_DETECTED: Final[int]  # 0xC7A10009
HOST_REVOKED: Final[int]  # 0xC7A1000A
HOST_UNREACHABLE: Final[int]  # 0xC7A10101
HOST_TIMEOUT: Final[int]  # 0xC7A10102
PROTOCOL_ERROR: Final[int]  # 0xC7A10103
UNTRUSTED_RESPONSE: Final[int]  # 0xC7A10104
NO_HOST: Final[int]  # 0xC7A10105
NO_REARM_LEFT: Final[int]  # 0xC7A10201
KEY_NOT_USABLE: Final[int]  # 0xC7A10202
ACCESS_DENIED: Final[int]  # 0xC7A10203
STATE_UNAVAILABLE: Final[int]  # 0xC7A10204
NO_TRUST: Final[int]  # 0xC7A10205
INVALID_ARGUMENT: Final[int]  # 0xC7A10301
INTERNAL_ERROR: Final[int]  # 0xC7A10302

def result_name(code: int) -> str:
    """The snake_case name of a result code (`"success"` for 0, `"unknown"` if not known)."""
    ...

class TallyError(Exception):
    """A failed call: `.code` (e.g. 0xC7A10202), `.name` ("key_not_usable"), `.message`."""

    code: int
    name: str
    message: str

class Activation:
    """What an activation that reached a host (or the authority) gave."""

    @property
    def activated(self) -> bool: ...
    @property
    def count(self) -> int: ...
    @property
    def threshold(self) -> int: ...
    @property
    def code(self) -> int: ...
    @property
    def message(self) -> str: ...

class Status:
    """The license status."""

    @property
    def licensed(self) -> bool: ...
    @property
    def permanent(self) -> bool: ...
    @property
    def state(self) -> str: ...
    @property
    def days_left(self) -> int: ...
    @property
    def minutes_left(self) -> int: ...
    @property
    def edition(self) -> Optional[str]: ...
    @property
    def count(self) -> Optional[int]: ...
    @property
    def last_result(self) -> Optional[int]: ...
    @property
    def rearms_left(self) -> int: ...
    @property
    def validity_end(self) -> Optional[str]: ...
    @property
    def grace_end(self) -> Optional[str]: ...
    @property
    def next_attempt(self) -> Optional[str]: ...
    @property
    def clock_behind_secs(self) -> Optional[int]: ...
    @property
    def cmid(self) -> str: ...
    @property
    def revoked(self) -> Optional[str]: ...
    @property
    def revocation_serial(self) -> int: ...

class Licensing:
    """An installation's licensing, opened on its state directory. Thread-safe."""

    def __init__(
        self, state_dir: _Path, catalog: Optional[_Path] = None, timeout: Optional[float] = None
    ) -> None: ...
    def install_key(self, key: str) -> str: ...
    def uninstall_key(self) -> str: ...
    def activate(
        self,
        host: Optional[str] = None,
        trust: Optional[_Path] = None,
        authority: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Activation: ...
    def installation_id(self) -> str: ...
    def confirm(self, confirmation_id: str) -> str: ...
    def status(self) -> Status: ...
    def rearm(self) -> str: ...
    def generalize(self) -> str: ...
    def set_host(self, host: str) -> str: ...
    def clear_host(self) -> str: ...
    def set_timeout(self, timeout: float) -> None: ...
    def set_log_callback(
        self, callback: Optional[Callable[[str, str], None]], level: str = "info"
    ) -> None: ...
    def wait_for_change(
        self, known: Optional[Status] = None, timeout: float = 60.0
    ) -> Optional[Status]: ...
