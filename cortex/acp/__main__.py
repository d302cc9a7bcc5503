"""`helexa-acp` / `python -m cortex.acp`: run the ACP agent on stdin/stdout.

An editor spawns this process and speaks ACP (JSON-RPC, one message per line)
over its standard streams; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cortex.acp.config import load_config

    config, args = load_config(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import acp  # noqa: F401
    except ImportError:
        print("helexa-acp needs the `acp` extra: pip install 'helexa[acp]'", file=sys.stderr)
        return 2
    asyncio.run(_serve(config))
    return 0


async def _serve(config) -> None:
    from acp import run_agent

    from cortex.acp.agent import HelexaAgent
    from cortex.acp.endpoint import Endpoint

    endpoint = Endpoint(config.endpoint, config.api_key)
    try:
        await run_agent(HelexaAgent(config, endpoint))
    finally:
        await endpoint.aclose()


if __name__ == "__main__":
    sys.exit(main())
