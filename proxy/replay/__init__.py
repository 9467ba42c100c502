"""Record, replay and test: know what a policy will do before it is enforced.

* ``read_capture(path)`` streams a mitmproxy flow file or a HAR 1.2 file as
  ``CapturedFlow`` items (``CaptureNote`` for entries that cannot be read);
* ``replay(items, policy)`` adjudicates every request, MCP message and response in
  event order through a ``Gateway``, exactly as the addon does, yielding ``Row``s;
* ``what_if(items, new, old)`` yields the ``Change``s between two policies;
* ``redact_bytes`` is what the recorder uses to keep secrets out of captures;
* ``cli.add_parser`` / ``cli.run`` are the ``fiveplane replay`` and ``fiveplane test``
  commands (also ``python -m proxy.replay``).

Nothing here needs mitmproxy except reading flow files (imported when one is read)
and ``--live`` (httpx).
"""

from .capture import CapturedFlow, CaptureError, CaptureNote, Message, read_capture
from .engine import Change, Lane, Row, replay, what_if
from .redact import redact_bytes

__all__ = [
    "CaptureError",
    "CaptureNote",
    "CapturedFlow",
    "Change",
    "Lane",
    "Message",
    "Row",
    "read_capture",
    "redact_bytes",
    "replay",
    "what_if",
]
