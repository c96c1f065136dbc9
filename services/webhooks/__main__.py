"""`python -m services.webhooks`: run the webhook dispatcher (SWARM_* and SWARM_WEBHOOKS_*)."""

import asyncio

from services.webhooks.service import main

asyncio.run(main())
