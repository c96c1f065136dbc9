"""`swarm task`: send work to a named task queue, and see how much waits in each.

A task is stored in SWARM_TASKS (a work queue) on `swarm.task.<queue>` until the scheduler's
distributor has handed it to a replica that answered; agents take a queue by listing it in their
spec's `task_queues`. With `--wait`, the answer of the replica that handled it is printed.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_NO_OUTCOME,
    EXIT_OK,
    CliError,
    Format,
    emit,
    stdout_console,
    table,
)
from swarm.cli.verbs import EXIT_CODES, OutputOption, finish

app = typer.Typer(help="Send tasks to named queues.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="task")


@app.command("send", epilog=EXIT_CODES)
def send(
    queue: Annotated[str, typer.Argument(help="The task queue's name.", show_default=False)],
    message: Annotated[
        str,
        typer.Argument(
            help="The task: any text, by convention JSON; '-' reads stdin.", show_default=False
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the answer of the replica that handles it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds --wait waits for the answer.")
    ] = 30.0,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Queue one task; it is kept until a replica taking the queue has handled it."""
    import asyncio

    from schemas import names
    from swarm.client.tasks import check_queue, queue_task

    body = sys.stdin.buffer.read() if message == "-" else message.encode()

    async def main() -> int:
        check_queue(queue)
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings, streams=(names.STREAM_TASKS,)) as log:
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            inbox = None
            if wait:
                inbox = log.new_inbox()

                async def on_answer(msg: Any) -> None:
                    if not answer.done():
                        answer.set_result(msg)

                await log.subscribe(inbox, on_answer, max_msgs=1)
            queued = await queue_task(log, queue, body, reply_to=inbox)
            task_id = queued.task_id
            if not wait:
                typer.echo(f"task {task_id} queued on {queue} (sequence {queued.seq})")
                return EXIT_OK
            try:
                reply = await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                raise CliError(
                    f"task {task_id} on {queue} was not answered within {timeout:g}s",
                    code=EXIT_NO_OUTCOME,
                    hint="it stays queued until a replica takes it: is an agent with "
                    f"task_queues [{queue}] running, and a scheduler?",
                ) from None
        headers_in = reply.headers or {}
        typer.echo(reply.data.decode("utf-8", "replace"))
        status = headers_in.get(names.HEADER_AGENT_STATUS, "0")
        if status != "0":
            typer.echo(f"agent returned status {status}", err=True)
            return EXIT_FAILED
        return EXIT_OK

    finish(main())


@app.command("ls")
def ls(output: OutputOption = Format.TABLE, nats_url: connect.NatsUrlOption = None) -> None:
    """Tasks waiting per queue (taken tasks leave the queue once answered)."""
    from schemas import names
    from swarm.client.eventlog import LogAdmin, RequestTimeout

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings, streams=(names.STREAM_TASKS,)) as log:
            try:
                state = await LogAdmin(log).stream(names.STREAM_TASKS, subjects=names.TASKS_ALL)
            except RequestTimeout:
                raise CliError("NATS did not answer in time", code=EXIT_NO_OUTCOME) from None
        waiting = {
            names.task_queue_of(subject) or subject: count
            for subject, count in state.subjects.items()
        }
        rows = [{"queue": q, "waiting": n} for q, n in sorted(waiting.items())]
        if output == Format.TABLE:
            rendered = table(
                ["QUEUE", "WAITING"], [[r["queue"], r["waiting"]] for r in rows], title=None
            )
            stdout_console().print(rendered)
        else:
            emit({"queues": rows}, output)
        return EXIT_OK

    finish(main())


__all__ = ["app", "register"]
