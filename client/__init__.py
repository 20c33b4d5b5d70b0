"""Python clients of a telediag engine.

:class:`Subscriber` yields decoded chunks (with their stream metadata) from the
engine's publish socket::

    from telediag.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", topics=["ecg/", "event/"]) as sub:
        for chunk in sub.iter(timeout_s=5):
            print(chunk.topic, chunk.seq, chunk.rate_hz, chunk.data.shape)
        print(sub.stats()["drops"])  # messages lost on the way (per-topic seq gaps)

:class:`SeqTracker` does the drop counting for any loop of your own.
"""

from telediag.client.api import InferenceClient as InferenceClient
from telediag.client.subscriber import SeqTracker, Subscriber, TailSummary, TopicCounters

__all__ = ["SeqTracker", "Subscriber", "TailSummary", "TopicCounters"]
