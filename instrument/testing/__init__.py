"""Test support: an OTLP receiver, in-memory capture and a TCP fault proxy.

- :class:`OtlpReceiver` collects what the toolkit exports over OTLP gRPC and HTTP on loopback.
- :func:`capture` installs in-memory SDK providers once per process and clears them per use.
- ``FaultProxy`` (``instrument.testing._proxy``) makes real sockets slow, reset or silent.
"""

from instrument.testing._memory import Capture, capture
from instrument.testing._receiver import LogRecord, MetricPoint, OtlpReceiver, Span

__all__ = ["Capture", "LogRecord", "MetricPoint", "OtlpReceiver", "Span", "capture"]
