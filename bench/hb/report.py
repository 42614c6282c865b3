"""The heartbeat benchmarks' printed report and the environment they ran in."""
from __future__ import annotations

import os
import platform


def fmt_s(x: float, unit: str = "ms") -> str:
    if x != x:  # nan
        return "-"
    if unit == "us":
        return f"{x * 1e6:8.1f} us"
    if unit == "ms":
        return f"{x * 1e3:8.2f} ms"
    return f"{x:8.3f} s "


def print_report(res: dict) -> None:
    env = res["environment"]
    print()
    print("ipcluster heartbeat benchmark")
    print(f"  {env['python']} | pyzmq {env['pyzmq']} / libzmq {env['libzmq']} | Twisted {env['twisted']} | "
          f"{env['cpus']} CPUs | {env['platform']}")
    hb = res["settings"]
    print(f"  controller defaults: heartbeat period {hb['heartbeat_period']:g} s, dead after "
          f"{hb['heartbeat_misses']} missed beats")
    if "rtt" in res:
        raw, via = res["rtt"]["raw_heart"], res["rtt"]["controller"]
        print()
        print("1. Heartbeat round-trip time")
        print(f"   {'':44} {'n':>6} {'median':>11} {'p99':>11} {'max':>11}")
        print(f"   {'raw: pyzmq ROUTER -> in-process Heart':44} {raw['n']:>6} {fmt_s(raw['median'], 'us'):>11} "
              f"{fmt_s(raw['p99'], 'us'):>11} {fmt_s(raw['max'], 'us'):>11}")
        print(f"   {'controller rtt (engines(), one per beat)':44} {via['n']:>6} {fmt_s(via['median'], 'us'):>11} "
              f"{fmt_s(via['p99'], 'us'):>11} {fmt_s(via['max'], 'us'):>11}")
        print(f"   (controller: {via['engines']} local engines sampled for {via['seconds']:g} s, "
              f"{via['samples']} samples; engines() call median {via['engines_call']['median'] * 1e3:.2f} ms)")
    if "death" in res:
        d = res["death"]
        print()
        print("2. Time from signal to state 'dead' in client.engines() (polled every 20 ms)")
        print(f"   {'':44} {'n':>3} {'median':>10} {'min':>10} {'max':>10}")
        rows = [
            ("external engine, SIGKILL", d["external"]["SIGKILL"]),
            ("external engine, SIGSTOP", d["external"]["SIGSTOP"]),
            ("controller-started engine, SIGKILL", d["local_sigkill"]),
        ]
        for label, r in rows:
            print(f"   {label:44} {r['n']:>3} {fmt_s(r['median'], 's'):>10} {fmt_s(r['min'], 's'):>10} "
                  f"{fmt_s(r['max'], 's'):>10}")
        for label, r in rows:
            print(f"   {label + ':':37} samples " + ", ".join(f"{x:.3f}" for x in r["samples"]) + " s")
            print(f"   {'':37} reason  {r['reason']!r}")
    if "cpu" in res:
        print()
        print("3. Controller CPU with simulated engines (real Hearts, spread over helper processes)")
        print(f"   {'engines':>7} {'window':>7} {'cpu s':>7} {'% core':>7} {'helpers %':>9} {'up in':>7} "
              f"{'rtt med':>9} {'rtt p99':>9} {'late':>4} {'events':>6} {'dead':>4}  ok")
        for r in res["cpu"]:
            rtt = r["rtt_after_window"]
            med = f"{rtt['median'] * 1e3:.2f}ms" if rtt else "-"
            p99 = f"{rtt['p99'] * 1e3:.2f}ms" if rtt else "-"
            print(
                f"   {r['engines']:>7} {r['window_s']:>6.1f}s {r['controller_cpu_s']:>7.2f} "
                f"{r['controller_percent_core']:>6.1f}% {r['helpers_percent_core']:>8.1f}% "
                f"{r['seconds_to_all_alive']:>6.1f}s "
                f"{med:>9} {p99:>9} "
                f"{r['late_ticks_in_window']:>4} {sum(r['events_in_window'].values()):>6} "
                f"{r['not_alive_after_window']:>4}  {'yes' if r['ok'] else 'NO'}"
            )
        print("   (% core: controller user+system CPU seconds per wall second x 100; helpers %: the simulated")
        print("    engines' processes, same machine; late: monitor ticks the controller ran late, which judge")
        print("    nobody; events: dead/busy/purged/left/registering lines in the controller log during the")
        print("    window; dead: engines not alive, or re-registered, after the window; ok: events = dead = 0;")
        print("    rtt: engines() rtt fields after the window; pongs are read only after the tick has sent")
        print("    all its pings, so at scale this rtt includes the time the monitor's tick takes)")
    print_scale(res)
    print()
    print(f"total runtime {res['runtime_s']:.1f} s; load average (1/5/15 min) at start "
          f"{env['loadavg_at_start']}, at end {env['loadavg_at_end']}")


def environment() -> dict:
    import twisted
    import zmq

    return {
        "python": f"Python {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "twisted": twisted.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }



def ms(x) -> str:
    return f"{x * 1e3:.1f}ms" if x is not None else "-"


def print_scale(res: dict) -> None:
    if res.get("scale"):
        print()
        print("Scale: simulated hearts at the default period, plus real engines SIGSTOPped in turn")
        print(f"   {'engines':>7} {'helpers':>7} {'fds':>6} {'up in':>7} {'% core':>7} {'slice max':>9} "
              f"{'slice p99':>9} {'>5ms':>5} {'drain max':>9} {'io max':>8} {'rtt med':>8} {'rtt p99':>8} {'late':>4} "
              f"{'dead':>4} {'busy':>5} {'hung->dead':>22}  ok")
        for r in res["scale"]:
            hold, rtt, hung = r["hold"] or {}, r["rtt_after_window"] or {}, r["hung"] or {}
            sl, io = hold.get("slice", {}), hold.get("io", {})
            false = r["false_deaths_whole_run"]
            dead = ", ".join(f"{x:.2f}" for x in hung.get("samples", [])) + " s" if hung else "-"
            print(f"   {r['simulated']:>5}+{r['real']:<1} {r['helper_processes']:>7} {r['controller_open_files']:>6} "
                  f"{r['seconds_to_all_alive']:>6.1f}s {r['controller_percent_core']:>6.1f}% "
                  f"{ms(sl.get('max')):>9} {ms(sl.get('p99')):>9} {sl.get('over_5ms', 0):>5} "
                  f"{ms(hold.get('drain', {}).get('max')):>9} {ms(io.get('max')):>8} "
                  f"{ms(rtt.get('median')):>8} {ms(rtt.get('p99')):>8} {r['late_ticks_in_window']:>4} "
                  f"{false.get('dead', 0) + false.get('purged', 0):>4} {false.get('busy', 0):>5} {dead:>22}  {'yes' if r['ok'] else 'NO'}"
                  + (f"  (--busy-after {r['busy_after']:g})" if r.get("busy_after") else "")
                  + (f"  ({r['heart_only']} heart-only)" if r.get("heart_only") else "")
                  + ("  (light hearts)" if r.get("light_hearts") else ""))
        print("   (fds: the controller's open files once all are alive; slice: one heart-monitor slice's hold of")
        print("    the reactor in the window (drain, judge, ping), timed inside the controller; >5ms: slices over")
        print("    5 ms; drain: the longest bounded read of waiting pongs (a slice's first step); io: the longest")
        print("    single socket event handled; dead / busy: engines never stopped declared dead or purged / busy,")
        print("    whole run (busy is not dead: heart answers, control late); hung->dead: SIGSTOP of each real")
        print("    engine to the controller logging it dead, inf: not within 60 s; ok: no dead, busy, not-alive)")
    for f in res.get("scale_failed", []):
        print(f"   {f['engines']} engines (--busy-after {f['busy_after']}): FAILED: {f['error']}")
    print_storm(res)


def print_storm(res: dict) -> None:
    if res.get("storm"):
        print()
        print("Registration storm: every engine released at the same moment")
        print(f"   {'engines':>7} {'real':>5} {'all alive':>9} {'sim reply':>9} {'cpu s':>6} {'% core':>7} "
              f"{'slice max':>9} {'io max':>8} {'twice':>5} {'refused':>7} {'purged':>6} {'dead':>4} {'late':>4}  ok")
        for r in res["storm"]:
            hold = r["hold"] or {}
            reply = r["seconds_to_last_sim_reply"]
            print(f"   {r['engines']:>7} {r['real']:>5} {r['seconds_to_all_alive']:>8.2f}s "
                  f"{(f'{reply:.2f}s' if reply is not None else '-'):>9} {r['controller_cpu_s']:>6.2f} "
                  f"{r['controller_percent_core']:>6.1f}% {ms(hold.get('slice', {}).get('max')):>9} "
                  f"{ms(hold.get('io', {}).get('max')):>8} {r['registered_twice']:>5} {r['refused']:>7} "
                  f"{r['purged']:>6} {r['dead']:>4} {r['late_slices']:>4}  {'yes' if r['ok'] else 'NO'}")
        print("   (all alive: from the go to engines() listing every engine alive; sim reply: to the last")
        print("    simulated engine's 'registered'; twice: ids registered more than once (a timed-out attempt);")
        print("    % core: controller CPU over the storm; slice/io max: longest reactor turns during it)")
