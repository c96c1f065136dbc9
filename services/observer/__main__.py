"""`python -m services.observer`: run the Observer (SWARM_* and SWARM_OBSERVER_* settings)."""

import asyncio

from services.observer.service import main

asyncio.run(main())
