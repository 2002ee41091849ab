"""`gridflex demo`: a simulated site on a real 2024 ERCOT day, with a dispatch in the middle."""

from __future__ import annotations

import asyncio
from datetime import date

import click
from rich.console import Console

from agent.demo.run import DemoMqtt, DemoOptions, NoPricesError, run_demo

__all__ = ["demo"]


@click.command()
@click.option(
    "--day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default="2024-05-08",
    show_default=True,
    help="a 2024 operating day (2024-05-08 and 2024-08-20 are dramatic ones)",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, max=600),
    default=15.0,
    show_default=True,
    help="how long the whole day takes on screen (0: as fast as possible)",
)
@click.option("--target-kw", type=float, default=700.0, show_default=True, help="dispatch ceiling")
@click.option("--live/--no-live", default=None, help="live view (default: on a terminal only)")
@click.option("--from-hour", type=click.IntRange(0, 23), default=0, help="local hour to start")
@click.option("--to-hour", type=click.IntRange(1, 24), default=24, help="local hour to stop")
@click.option(
    "--mqtt-host",
    default="127.0.0.1",
    show_default=True,
    help="MQTT broker to publish on, when one answers (anonymous, plain TCP)",
)
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--no-mqtt", is_flag=True, help="do not look for a broker")
def demo(  # noqa: PLR0917 - one argument per option
    day: date,
    seconds: float,
    target_kw: float,
    live: bool | None,
    from_hour: int,
    to_hour: int,
    mqtt_host: str,
    mqtt_port: int,
    no_mqtt: bool,
) -> None:
    """Run a simulated 263-device site through a real ERCOT day in seconds.

    When an MQTT broker answers, the demo publishes as `gridflex run` does (status, telemetry,
    decision, dispatch/ack under gridflex/demo-<run id>/) and its dispatch arrives over MQTT:
    watch with `mosquitto_sub -t 'gridflex/#' -v`. Without one it runs in-process.
    """
    options = DemoOptions(
        day=day.date() if hasattr(day, "date") else day,
        seconds=seconds,
        dispatch_target_kw=target_kw,
        live=live,
        from_hour=from_hour,
        to_hour=max(to_hour, from_hour + 1),
        mqtt=None if no_mqtt else DemoMqtt(host=mqtt_host, port=mqtt_port),
    )
    try:
        asyncio.run(run_demo(options, Console()))
    except NoPricesError as exc:
        raise click.BadParameter(str(exc), param_hint="--day") from None
