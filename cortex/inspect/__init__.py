"""`python -m cortex.inspect`: a live, top-like view of the actor trees of a fleet.

    python -m cortex.inspect [--url http://gateway:31313] [--once] [--json] [--filter TEXT]

Pointed at a gateway it shows the gateway's tree (fleet → node actors with
state, last poll and errors; requests → each relayed request with model,
node, phase, tokens, tok/s and age) and beneath each node that node's own
tree, read through the gateway (device workers with pid, restarts, memory,
resident models, running and waiting sequences; in-flight generations).
Pointed at a neuron it shows that node alone. The view is fed by the
servers' streaming `/admin/actors/stream` endpoints and redraws when they
report a change; `--once` prints one tree and exits, `--json` prints the raw
snapshots. A tree that cannot be read shows as unreachable.

    feed     Board: the latest snapshot per tree; fetch once, or follow the streams
    render   the Board as a rich tree (pure)
    live     the terminal loop: redraw on change, keys, signals

Not for: changing anything (`cortex status` and the admin routes are next door).
"""

from cortex.inspect.feed import Board, InspectError, Source, fetch_board, follow
from cortex.inspect.render import render_board

__all__ = ["Board", "InspectError", "Source", "fetch_board", "follow", "render_board"]
