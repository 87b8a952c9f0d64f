/**
 * The fork server's program, in Python 3 (Debian's python3-minimal: the
 * agent image installs it). It is a small, single-threaded process that
 * starts jobs for the agent, so the agent's own large Node process never
 * forks: a fork copies the page tables of the forking process, and uv_spawn
 * blocks the agent's event loop until the child has exec'd.
 *
 * It starts a job with posix_spawn (glibc: clone with CLONE_VM|CLONE_VFORK,
 * no page tables copied, and exec errors come back as the call's error).
 * Measured on the CI machine (2,000 × /bin/true, 16 at a time, CPU per spawn):
 * posix_spawn from Python 0.05 ms + 0.51 ms in the child; fork + exec from
 * Perl (the previous fork server) 0.22–0.25 ms + 0.92–1.07 ms in the child,
 * whose copy-on-write faults and environment setup cost more than the exec.
 * A job with runAs (a uid or gid) needs setuid/setgid before exec, which
 * posix_spawn cannot do; those jobs are forked (still from this small process).
 *
 * Kept as a string so every way the agent is packaged carries it; the agent
 * hands it to `python3 -I -S` (no environment, no site packages) on fd 3. See
 * forkserver.ts for the agent's side and docs/architecture.md ("Execution").
 */
export const FORKSERVER_SCRIPT = String.raw`
import errno, os, select, signal, sys

# The agent's requests (stdin), each a header line and maybe a payload:
#   S <id> <len>\n<payload>   spawn; payload fields split by NUL: file, cwd, uid, gid,
#                             stdin, stdout, stderr ("pipe" or "null"; stderr also "stdout":
#                             one pipe for both, in the order written), argc, argv..., env...
#   I <id> <len>\n<bytes>     the child's whole stdin; its pipe is closed after it
#   H <id> <s> / R <id> <s>   hold / resume reading stream s (1 stdout, 2 stderr)
#   D <id> <s>                close our end of stream s (the agent stopped listening)
# What it says (stdout):
#   P <id> <pid>\n            exec'd        F <id> <errno name> <message>\n   did not start
#   O <id> <s> <len>\n<bytes> output        E <id> <s>\n                      end of stream s
#   X <id> <wait status>\n    exited (raw status: exit code << 8, or the signal number)
#
# Python opens every descriptor non-inheritable (PEP 446), so only the 0-2 a job is given
# reach it. Python ignores SIGPIPE and SIGXFSZ for itself; jobs get them back at default.

RESTORE = (signal.SIGPIPE, signal.SIGXFSZ)
jobs = {}     # id -> dict(pid, out={s: fd}, inp=fd, inbuf, status=fd, reason, failed)
by_fd = {}    # fd -> (id, kind): kind 1, 2 (output), "s" (exec status), "i" (stdin)
pid_id = {}   # pid -> id
poller = select.poll()
null = os.open("/dev/null", os.O_RDWR)   # stdio a job does not pipe
home = os.open(".", os.O_PATH | os.O_DIRECTORY)   # the agent's directory, for jobs without a cwd

# SIGCHLD wakes the poll through a pipe.
sig_r, sig_w = os.pipe()
os.set_blocking(sig_r, False)
os.set_blocking(sig_w, False)
signal.set_wakeup_fd(sig_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
poller.register(sig_r, select.POLLIN)
poller.register(0, select.POLLIN)


def write_all(data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(1, view):]
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)   # the agent is gone


def say(line):
    write_all(line.encode() + b"\n")


def err_name(e):
    return errno.errorcode.get(e, "E%d" % e)


def watch(fd, id, kind, events=select.POLLIN):
    by_fd[fd] = (id, kind)
    poller.register(fd, events)


def unwatch(fd):
    by_fd.pop(fd, None)
    try:
        poller.unregister(fd)
    except KeyError:
        pass
    os.close(fd)


def on_path(file, env):
    """A bare program name, looked up on the job's PATH as execvp does (None: not found)."""
    if b"/" in file:
        return file
    for d in env.get(b"PATH", b"/usr/bin:/bin").split(b":"):
        candidate = os.path.join(d or b".", file)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def spawn_job(id, payload):
    f = payload.split(b"\0")
    file, cwd, uid, gid, in_mode, out_mode, err_mode, argc = f[:8]
    argc = int(argc)
    argv = f[8:8 + argc]
    env = {}
    for kv in f[8 + argc:]:
        i = kv.find(b"=")
        if i > 0:
            env[kv[:i]] = kv[i + 1:]
    opened = []
    try:
        r = {}
        w = {}
        for s, mode in ((1, out_mode), (2, err_mode)):
            if mode == b"pipe":
                r[s], w[s] = os.pipe()
                opened += [r[s], w[s]]
        in_r = in_w = None
        if in_mode == b"pipe":
            in_r, in_w = os.pipe()
            opened += [in_r, in_w]
    except OSError as e:
        for fd in opened:
            os.close(fd)
        return say("F %s %s pipe: %s" % (id, err_name(e.errno), os.strerror(e.errno)))
    fd0 = in_r if in_r is not None else null
    fd1 = w.get(1, null)
    fd2 = w[2] if 2 in w else (w[1] if err_mode == b"stdout" else null)
    job = {"pid": None, "out": {}, "inp": None, "inbuf": b"", "status": None, "failed": False}
    if uid or gid:
        pid = fork_job(id, job, file, argv, env, cwd, uid, gid, fd0, fd1, fd2)
    else:
        pid = None
        path = on_path(file, env)
        try:
            # posix_spawn cannot change directory: this process does, around the spawn, and goes back.
            if cwd:
                os.chdir(cwd)
        except OSError as e:
            say("F %s %s chdir %s: %s" % (id, err_name(e.errno), cwd.decode(errors="replace"), os.strerror(e.errno)))
        else:
            try:
                if path is None:
                    raise FileNotFoundError(errno.ENOENT, "not found on PATH")
                pid = os.posix_spawn(path, argv, env, setsid=True, setsigdef=RESTORE, setsigmask=(),
                                     file_actions=[(os.POSIX_SPAWN_DUP2, fd0, 0), (os.POSIX_SPAWN_DUP2, fd1, 1),
                                                   (os.POSIX_SPAWN_DUP2, fd2, 2)])
            except OSError as e:
                say("F %s %s exec %s: %s" % (id, err_name(e.errno), file.decode(errors="replace"), os.strerror(e.errno)))
            finally:
                if cwd:
                    os.fchdir(home)   # no job's directory stays pinned, and the next job without a cwd gets the agent's
    for fd in w.values():
        os.close(fd)
    if in_r is not None:
        os.close(in_r)
    if pid is None:
        for fd in r.values():
            os.close(fd)
        if in_w is not None:
            os.close(in_w)
        return
    job["pid"] = pid
    jobs[id] = job
    pid_id[pid] = id
    if job["status"] is None:
        say("P %s %d" % (id, pid))   # posix_spawn returns once the child has exec'd
    for s, fd in r.items():
        job["out"][s] = fd
        os.set_blocking(fd, False)
        watch(fd, id, s)
    if in_w is not None:
        job["inp"] = in_w
        os.set_blocking(in_w, False)
        by_fd[in_w] = (id, "i")   # polled for writing once its bytes arrive (I)


def fork_job(id, job, file, argv, env, cwd, uid, gid, fd0, fd1, fd2):
    """setgid/setuid, then exec: needs a fork. Failures before exec come back on a status pipe."""
    try:
        st_r, st_w = os.pipe()
    except OSError as e:
        say("F %s %s pipe: %s" % (id, err_name(e.errno), os.strerror(e.errno)))
        return None
    try:
        pid = os.fork()
    except OSError as e:
        os.close(st_r)
        os.close(st_w)
        say("F %s %s fork: %s" % (id, err_name(e.errno), os.strerror(e.errno)))
        return None
    if pid == 0:
        what = "setsid"
        try:
            for sig in RESTORE + (signal.SIGCHLD,):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            what = "dup2"
            os.dup2(fd0, 0)
            os.dup2(fd1, 1)
            os.dup2(fd2, 2)
            if gid:
                what = "setgid %s" % gid.decode()
                os.setgid(int(gid))
            if uid:
                # Drop supplementary groups to the job's group, as libuv does, then the user.
                what = "setgroups"
                try:
                    os.setgroups([int(gid) if gid else os.getgid()])
                except PermissionError:
                    pass   # not root: keep the groups it has, as libuv does
                what = "setuid %s" % uid.decode()
                os.setuid(int(uid))
            # Without a cwd it stays where this process is, the agent's directory (the spawn path
            # always comes back there), with no access check as the job's user, as before a fork.
            if cwd:
                what = "chdir %s" % cwd.decode(errors="replace")
                os.chdir(cwd)
            what = "exec %s" % file.decode(errors="replace")
            path = on_path(file, env)
            if path is None:
                raise FileNotFoundError(errno.ENOENT, "not found on PATH")
            os.execve(path, argv, env)
        except OSError as e:
            try:
                os.write(st_w, ("%s %s: %s" % (err_name(e.errno), what, os.strerror(e.errno))).encode())
            except OSError:
                pass
        finally:
            os._exit(127)
    os.close(st_w)
    job["status"] = st_r
    job["reason"] = b""
    os.set_blocking(st_r, False)
    watch(st_r, id, "s")
    return pid


def read_status(id, blocking):
    """The status pipe of a forked job: EOF means exec succeeded; bytes are why it did not."""
    job = jobs.get(id)
    fd = job and job["status"]
    if fd is None:
        return
    if blocking:
        os.set_blocking(fd, True)
    while True:
        try:
            b = os.read(fd, 4096)
        except BlockingIOError:
            return   # the rest comes later
        except InterruptedError:
            continue
        if not b:
            break
        job["reason"] += b
    unwatch(fd)
    job["status"] = None
    if not job["reason"]:
        say("P %s %d" % (id, job["pid"]))
    else:
        job["failed"] = True
        say("F %s %s" % (id, job["reason"].decode(errors="replace").replace("\n", " ")))


def read_output(id, s):
    job = jobs.get(id)
    fd = job and job["out"].get(s)
    if fd is None:
        return
    try:
        b = os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        b = b""
    if not b:
        unwatch(fd)
        del job["out"][s]
        say("E %s %d" % (id, s))
        forget(id)
        return
    write_all(b"O %s %d %d\n" % (id.encode(), s, len(b)) + b)


def write_stdin(id):
    job = jobs.get(id)
    fd = job and job["inp"]
    if fd is None:
        return
    while job["inbuf"]:
        try:
            n = os.write(fd, job["inbuf"])
        except InterruptedError:
            continue
        except BlockingIOError:
            return
        except OSError:
            break   # EPIPE: it closed its stdin
        job["inbuf"] = job["inbuf"][n:]
    unwatch(fd)
    job["inp"] = None


def forget(id):
    job = jobs.get(id)
    if job is None or job["pid"] is not None or job["out"] or job["status"] is not None:
        return
    if job["inp"] is not None:
        unwatch(job["inp"])
    del jobs[id]


def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        id = pid_id.pop(pid, None)
        if id is None:
            continue
        try:
            os.kill(-pid, signal.SIGKILL)   # what the job left behind in its group
        except OSError:
            pass
        job = jobs[id]
        if job["status"] is not None:
            read_status(id, True)
        if not job["failed"]:
            say("X %s %d" % (id, status))
        job["pid"] = None
        forget(id)


inbuf = bytearray()


def handle_requests():
    global inbuf
    while True:
        nl = inbuf.find(b"\n")
        if nl < 0:
            return
        parts = bytes(inbuf[:nl]).decode().split(" ")
        op, id = parts[0], parts[1]
        need = int(parts[2]) if op in ("S", "I") else 0
        if len(inbuf) < nl + 1 + need:
            return
        payload = bytes(inbuf[nl + 1:nl + 1 + need])
        del inbuf[:nl + 1 + need]
        if op == "S":
            spawn_job(id, payload)
        elif op == "I":
            job = jobs.get(id)
            if job and job["inp"] is not None:
                job["inbuf"] += payload
                poller.register(job["inp"], select.POLLOUT)   # again: the same registration
        elif op in ("H", "R", "D"):
            job = jobs.get(id)
            fd = job and job["out"].get(int(parts[2]))
            if fd is None:
                continue
            if op == "H":
                # Not polled (not even for hang-up) until R: the job waits on its full pipe.
                try:
                    poller.unregister(fd)
                except KeyError:
                    pass
            elif op == "R":
                poller.register(fd, select.POLLIN)
            else:
                unwatch(fd)
                del job["out"][int(parts[2])]
                forget(id)


say("READY %d" % os.getpid())
while True:
    events = poller.poll(1000)
    ready = sorted(events)
    for fd, ev in ready:
        if fd == sig_r:
            try:
                os.read(sig_r, 4096)
            except OSError:
                pass
        elif fd == 0:
            got = os.read(0, 1 << 20)
            if not got:
                sys.exit(0)   # the agent closed us: it is stopping or gone
            inbuf += got
    # Ascending descriptors: stdout before stderr of a job. The agent's requests come after,
    # so a descriptor one of them closes and a spawn reuses gets no event meant for the old one.
    for fd, ev in ready:
        entry = by_fd.get(fd)
        if entry is None:
            continue
        id, kind = entry
        if kind == "i":
            write_stdin(id)
        elif kind == "s":
            read_status(id, False)
        else:
            read_output(id, kind)
    handle_requests()
    reap()
`;
