"""``twistd ipcluster``: command-line options and the service maker."""
from __future__ import annotations

import os

from twisted.application import service
from twisted.python import usage

from ipcluster.connection import CHANNELS, default_data_dir
from ipcluster.controller.heartmonitor import DEFAULT_MISSES, DEFAULT_PERIOD
from ipcluster.controller.registry import DEFAULT_DEAD_ENGINE_TTL
from ipcluster.controller.supervisor import DEFAULT_RESTART_LIMIT, DEFAULT_RESTART_WINDOW
from ipcluster.scheduler.noengines import DEFAULT_NO_ENGINE_TIMEOUT
from ipcluster.scheduler.recovery import DEFAULT_RECOVERY_GRACE
from ipcluster.store import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_RESULT


def _positive(kind):
    def convert(value):
        v = kind(value)
        if v <= 0:
            raise ValueError(f"must be positive, got {value}")
        return v

    convert.coerceDoc = "Must be positive."
    return convert


def _not_negative(kind):
    def convert(value):
        v = kind(value)
        if v < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return v

    convert.coerceDoc = "Must be 0 or more."
    return convert


def _size(value):
    from ipcluster.controller.memory import parse_size

    return parse_size(value)


_size.coerceDoc = "Bytes, or a size such as 2GB (10^9 bytes) or 512MiB (2^20 bytes)."


def _port(value):
    v = int(value)
    if not 0 <= v <= 65535:
        raise ValueError(f"not a port number: {value}")
    return v


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an ipcluster controller. Engines (`ipcluster-engine`) register with it, stay under "
        "a heartbeat and run the tasks that clients (`ipcluster.Client`) send. The controller "
        "writes a connection file (addresses and signing key, mode 0600) into the data "
        "directory; engines and clients need only that file. Example: "
        "`twistd -n ipcluster --engines 2` runs a controller with two local engines in the "
        "foreground; stop it with Ctrl-C."
    )

    optFlags = [
        ["curve", None, "Encrypt and authenticate every socket with CurveZMQ even on a loopback --ip (on "
         "any other address it is always on): keys are generated per cluster and written to the connection "
         "file; peers without the cluster's client key are refused at the handshake."],
    ]

    optParameters = [
        ["engines", "n", 0, "Start this many local engine processes (ids e0, e1, ...) and supervise them: "
         "an engine whose process exits is reported dead at once and restarted (see --restart-limit). "
         "0: engines join on their own.", int],
        ["restart-limit", None, DEFAULT_RESTART_LIMIT, "Restart a local engine that dies at most this many "
         "times within --restart-window seconds; after that it stays down (shown 'given up'). Restarts back "
         "off: 0.5 s after a death, doubling with each quick death up to 30 s, and from 0.5 s again once an "
         "engine has lived 30 s. An engine that exits with code 0 (the exit verb, SIGTERM) left on purpose "
         "and is not restarted. 0: never restart.", _not_negative(int)],
        ["restart-window", None, DEFAULT_RESTART_WINDOW, "Seconds over which --restart-limit counts "
         "restarts.", _positive(float)],
        ["engine-memory-limit", None, None, "Restart a local engine whose resident memory (RSS, read from "
         "/proc every second) passes this size, e.g. 2GB or 512MiB: SIGTERM, SIGKILL after 5 s. Its task "
         "is retried or fails with EngineDied '... exceeded its memory limit ...' (default: no limit)", _size],
        ["no-engine-timeout", None, DEFAULT_NO_ENGINE_TIMEOUT, "When no engine is alive or registering and "
         "none is coming back (no local engine restart pending), queued tasks that may run on any engine "
         "fail with NoEngines after this many seconds; an engine that joins first ends the wait. Tasks "
         "pinned to engines fail as soon as those engines are gone. 0: wait forever.", _not_negative(float)],
        ["dead-engine-ttl", None, DEFAULT_DEAD_ENGINE_TTL, "Seconds a dead engine stays in the engine list "
         "(status, `ipcluster status`) unless it comes back; a local engine that was given up on stays "
         "until the controller stops. 0: dead engines stay (the newest 1000).", _not_negative(float)],
        ["ip", None, "127.0.0.1", "Interface to listen on. Use 0.0.0.0 or a host address to accept "
         "engines from other hosts: on any non-loopback address every socket uses CurveZMQ (encrypted, "
         "only the cluster's key admitted)."],
        ["location", None, None, "Address written to the connection file, where engines and clients "
         "connect (default: --ip, or this host's name when --ip is 0.0.0.0)."],
        ["data-dir", "d", None, f"Directory for connection.json (default: $IPCLUSTER_DIR or "
         f"~/.ipcluster, here {default_data_dir()})."],
        ["heartbeat-period", None, DEFAULT_PERIOD, "Seconds between heartbeats.", _positive(float)],
        ["heartbeat-misses", None, DEFAULT_MISSES, "Consecutive missed heartbeats after which an engine "
         "is dead. Default: dead within about 2 s of a crash or hang.", _positive(int)],
        ["busy-after", None, None, "Seconds of silence on an engine's control channel (while its heart "
         "answers) before it is shown busy. Default: 3 heartbeat periods, at least 1 s, and more beyond 375 "
         "engines (4 s at 1,000, 8 s from 2,000: control pings are paced to 500 a second in all). Control "
         "pings go out about every (this - 1.5 periods), at most 4 s apart", _positive(float)],
        ["registration-timeout", None, 10.0, "Seconds a registering engine has to answer its first "
         "heartbeat before its registration is purged.", _positive(float)],
        ["control-timeout", None, 10.0, "Default seconds a control command (beat, abort, ...) waits for "
         "its reply.", _positive(float)],
        ["prefetch", None, 1, "Tasks an engine may hold queued beyond the one it runs (load balancing).", int],
        ["store", None, "sqlite", "Where task records and results are kept: 'sqlite' (DATA_DIR/tasks.sqlite, "
         "survives restarts) or 'memory'."],
        ["store-max-age", None, 7 * 24 * 3600.0, "Seconds a finished task's record is kept.", _positive(float)],
        ["store-max-tasks", None, 1_000_000, "Most finished task records kept.", _positive(int)],
        ["store-max-payload", None, DEFAULT_MAX_PAYLOAD, "Largest task payload (pickled function and arguments) "
         "written to the store at submit, so that a restarted controller can run the task again. A larger task "
         "that no engine reports after a restart fails with TaskLost.", _size],
        ["store-max-result", None, DEFAULT_MAX_RESULT, "Largest result (value and printed output) written to the "
         "store. Results are stored before any client sees them: a larger one goes to the clients waiting for it "
         "without waiting for the disk, and fetch() later fails with ResultNotKept.", _size],
        ["recovery-grace", None, DEFAULT_RECOVERY_GRACE, "Seconds that tasks found unfinished in the store at "
         "start (the previous controller was killed) wait for the engines to re-register and report them "
         "(running, or with a result they could not deliver); then the others are queued again. Keep it above "
         "the engines' --controller-timeout plus a few seconds.", _positive(float)],
        ["web", None, None, "Serve a live status page, JSON (/status.json) and Prometheus metrics (/metrics) "
         "on this port or Twisted endpoint, e.g. 8080 or tcp:8080. Read-only and unauthenticated: it binds "
         "127.0.0.1 unless the endpoint names an interface (tcp:8080:interface=0.0.0.0)."],
        ["manhole-ssh", None, None, "Serve an interactive Python console into the running controller over "
         "SSH on this endpoint, e.g. tcp:2222:interface=127.0.0.1. Needs --manhole-authorized-keys "
         "(and/or --manhole-passwords). Full access to the controller: keep it private."],
        ["manhole-telnet", None, None, "The same console over telnet; loopback interfaces only, and it "
         "asks for a password from --manhole-passwords."],
        ["manhole-authorized-keys", None, None, "OpenSSH authorized_keys file for manhole SSH logins."],
        ["manhole-passwords", None, None, "File of user:password lines for manhole logins."],
        ["max-message-size", None, 256 * 1024 * 1024, "Largest message the task and client sockets accept, in "
         "bytes, all its frames counted (a task's pickled function and arguments; a result with its printed "
         "output). Written to the connection file: clients refuse larger tasks and engines larger results "
         "(PayloadTooLarge); larger messages are dropped unread.", _positive(int)],
        ["launcher", None, None, "What starts the --engines: 'local' (children of the controller, the default), "
         "'ssh' (on --ssh-hosts over OpenSSH), 'slurm' (a Slurm job array, or one job of srun steps) or 'mpi' "
         "(the ranks of mpiexec -n N). See docs/launchers.md."],
        ["profile", None, None, "A cluster profile (TOML): launcher, engines, ip and the [ssh], [slurm], [mpi] "
         "tables (docs/launchers.md). An option given here overrides the profile; one left at its default "
         "takes the profile's value."],
        ["ssh-hosts", None, None, "With --launcher ssh: comma-separated hosts, [user@]host[:port][*engines]."],
        ["remote-python", None, None, "The Python (with ipcluster installed) on SSH hosts or Slurm nodes "
         "(default: python3 over SSH, this interpreter under Slurm and MPI)."],
        ["mpiexec", None, None, "With --launcher mpi: the mpiexec command (default: mpiexec)."],
        ["slurm-partition", None, None, "With --launcher slurm: the partition (sbatch --partition)."],
        ["slurm-account", None, None, "With --launcher slurm: the account (sbatch --account)."],
        ["slurm-time", None, None, "With --launcher slurm: the time limit (sbatch --time), e.g. 02:00:00."],
        ["slurm-mode", None, None, "With --launcher slurm: 'array' (one array task per engine, the default) or "
         "'srun' (one job, one srun step per engine)."],
    ] + [
        [f"{channel}-port", None, 0, f"TCP port of the {channel} socket (0: any free port).", _port]
        for channel in CHANNELS
    ]

    def parseOptions(self, options=None) -> None:
        """As usage.Options; under twistd, a bad option ends twistd with one line and status 1
        (twistd's own report would print the whole option list before it)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(f"twistd ipcluster: {e} (see `twistd ipcluster --help`)") from None

    def postOptions(self) -> None:
        if self["engines"] < 0:
            raise usage.UsageError("--engines must be 0 or more")
        if self["prefetch"] < 0:
            raise usage.UsageError("--prefetch must be 0 or more")
        if self["store"] not in ("sqlite", "memory"):
            raise usage.UsageError("--store must be 'sqlite' or 'memory'")
        self.launcher_spec = _launcher_spec(self)
        if not self.launcher_spec.is_local and self["engine-memory-limit"] is not None:
            raise usage.UsageError("--engine-memory-limit needs --launcher local (it reads /proc on this host)")


def _launcher_spec(options: "Options"):
    """The launcher from ``--profile`` and the launcher options (which override the profile)."""
    from ipcluster.launchers.profile import KINDS, ProfileError, load_profile, spec_from

    try:
        profile = load_profile(options["profile"]) if options["profile"] else {}
    except ProfileError as e:
        raise usage.UsageError(str(e)) from None
    for key in ("engines", "ip", "location", "curve", "heartbeat-period", "heartbeat-misses"):
        value = profile.get(key, profile.get(key.replace("-", "_")))
        default = 0 if key == "curve" else dict((o[0], o[2]) for o in Options.optParameters).get(key)
        if value is not None and options[key] == default:
            options[key] = value
    kind = options["launcher"]
    if kind is not None and kind not in KINDS:
        raise usage.UsageError(f"--launcher must be one of {', '.join(KINDS)}")
    hosts = options["ssh-hosts"].split(",") if options["ssh-hosts"] else None
    python = options["remote-python"]
    slurm = {"partition": options["slurm-partition"], "account": options["slurm-account"],
             "time": options["slurm-time"], "mode": options["slurm-mode"], "python": python}
    try:
        return spec_from(profile, kind, {"ssh": {"hosts": hosts, "python": python},
                                         "mpi": {"mpiexec": options["mpiexec"], "python": python}, "slurm": slurm})
    except (ProfileError, ValueError) as e:
        raise usage.UsageError(str(e)) from None


#: twistd's own default pid file, in the working directory.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"
PIDFILE = "ipcluster.pid"


def _pidfile_in_data_dir(options: Options, data_dir) -> None:
    """twistd writes ``./twistd.pid`` unless told otherwise; a controller's pid belongs in its data
    directory (where ``ipcluster stop`` looks), so two controllers started from one folder with
    different data dirs do not refuse each other.  An explicit ``--pidfile`` is kept."""
    parent = getattr(options, "parent", None)
    # (twistd has made its default absolute by now: ./twistd.pid of the working directory)
    if parent is not None and parent.get("pidfile") in (TWISTD_DEFAULT_PIDFILE, os.path.abspath(TWISTD_DEFAULT_PIDFILE)):
        parent["pidfile"] = str(data_dir / PIDFILE)


class _Twistd(service.MultiService):
    """What twistd runs: the controller, whose start-up failures read as one clear line.

    A controller socket that cannot be bound (a port in use) ends ``twistd -n``
    with that line and exit code 1 (the line says which socket, which address
    and why: a traceback would add nothing).  As a daemon, twistd reports the
    same line through its status pipe and the log.
    """

    def __init__(self, controller, nodaemon: bool) -> None:
        super().__init__()
        self.controller = controller
        self.nodaemon = nodaemon
        controller.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        from ipcluster import gctune

        gctune.tune()  # the twistd process is ours alone: its collector runs less often

    def privilegedStartService(self) -> None:
        from ipcluster.controller.sockets import CannotListen

        try:
            super().privilegedStartService()
        except CannotListen as e:
            line = f"twistd ipcluster: {e.strerror}"
            raise (SystemExit(line) if self.nodaemon else RuntimeError(line)) from None


def _add_manhole(controller, options: Options, data_dir) -> None:
    """The manhole's services, only when a manhole option is given: twisted.conch and
    cryptography cost a tenth of a second of every controller's start-up."""
    manhole = {key: options[f"manhole-{key.replace('_', '-')}"] for key in ("ssh", "telnet", "authorized_keys", "passwords")}
    if all(value is None for value in manhole.values()):
        return
    from ipcluster.manhole.service import manhole_services

    try:
        for svc in manhole_services(controller, data_dir=data_dir, **manhole):
            svc.setServiceParent(controller)
    except ValueError as e:
        raise SystemExit(f"twistd ipcluster: {e}") from None


def makeService(options: Options):
    from ipcluster.controller.service import AlreadyRunning, Controller, ControllerConfig

    config = ControllerConfig(
        data_dir=options["data-dir"] or default_data_dir(),
        ip=options["ip"],
        location=options["location"],
        ports={channel: options[f"{channel}-port"] for channel in CHANNELS},
        engines=options["engines"],
        heartbeat_period=options["heartbeat-period"],
        heartbeat_misses=options["heartbeat-misses"],
        busy_after=options["busy-after"],
        registration_timeout=options["registration-timeout"],
        control_timeout=options["control-timeout"],
        max_message_size=options["max-message-size"],
        prefetch=options["prefetch"],
        store=options["store"],
        store_max_age=options["store-max-age"],
        store_max_tasks=options["store-max-tasks"],
        restart_limit=options["restart-limit"],
        restart_window=options["restart-window"],
        engine_memory_limit=options["engine-memory-limit"],
        no_engine_timeout=options["no-engine-timeout"] or None,
        dead_engine_ttl=options["dead-engine-ttl"] or None,
        store_max_payload=options["store-max-payload"],
        store_max_result=options["store-max-result"],
        recovery_grace=options["recovery-grace"],
        curve=True if options["curve"] else None,
        launcher=getattr(options, "launcher_spec", None) or _launcher_spec(options),
    )
    _pidfile_in_data_dir(options, config.data_dir)
    controller = Controller(config)
    try:
        controller.check_data_dir()
    except (AlreadyRunning, OSError) as e:
        raise SystemExit(f"twistd ipcluster: {e}") from None
    _add_manhole(controller, options, config.data_dir)
    if options["web"]:
        from ipcluster.web.service import web_service

        try:
            web_service(controller, options["web"]).setServiceParent(controller)
        except ValueError as e:
            raise SystemExit(f"twistd ipcluster: --web: {e}") from None
    parent = getattr(options, "parent", None)
    return _Twistd(controller, nodaemon=bool(parent is None or parent.get("nodaemon")))
