/**
 * The fork server's program, in Perl (perl-base is part of every Debian
 * system, the agent images included). It is a small, single-threaded process
 * that forks and execs jobs for the agent, so the agent's own large Node
 * process is never forked: a fork copies the page tables of the forking
 * process, and uv_spawn blocks the agent's event loop until the child has
 * exec'd. See forkserver.ts for the protocol and docs/architecture.md
 * ("Execution") for the measurements.
 *
 * Kept as a string so every way the agent is packaged carries it; the agent
 * hands it to `perl` on fd 3.
 */
export const FORKSERVER_SCRIPT = String.raw`
use strict;
use warnings;
use POSIX ();
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use Errno qw(EAGAIN EINTR);

$0 = 'aspen-forkserver';
binmode STDIN;
binmode STDOUT;

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

my %jobs;      # id -> { pid, status => fh, reason, out => {s => fh}, in => fh, inbuf, failed }
my %by_fd;     # fileno -> [id, kind] where kind is 1, 2 (output), 's' (exec status) or 'i' (stdin)
my %pid_id;    # pid -> id
open(my $null, '+<', '/dev/null') or die "/dev/null: $!";   # stdio a job does not pipe
my $rin = '';  # read set
my $win = '';  # write set (children's stdin)

# SIGCHLD wakes the select loop through a pipe (the handler runs between Perl ops, so the
# select also has a timeout as a backstop for a signal that lands just before it).
pipe(my $sig_r, my $sig_w) or die "pipe: $!";
nonblocking($sig_r); nonblocking($sig_w);
$SIG{CHLD} = sub { syswrite($sig_w, "x") };
vec($rin, fileno($sig_r), 1) = 1;
vec($rin, fileno(STDIN), 1) = 1;

sub nonblocking { my $fh = shift; my $f = fcntl($fh, F_GETFL, 0); fcntl($fh, F_SETFL, $f | O_NONBLOCK); }

sub say_line { my $line = shift; write_all("$line\n"); }
sub write_all {
  my $data = shift;
  my $off = 0;
  while ($off < length $data) {
    my $n = syswrite(STDOUT, $data, length($data) - $off, $off);
    if (!defined $n) { next if $! == EINTR; exit 0; }   # the agent is gone
    $off += $n;
  }
}

sub watch   { my ($fh, $id, $kind) = @_; $by_fd{fileno $fh} = [$id, $kind]; vec($rin, fileno $fh, 1) = 1; }
sub unwatch {
  my $fh = shift; my $fd = fileno $fh;
  vec($rin, $fd, 1) = 0; vec($win, $fd, 1) = 0;
  delete $by_fd{$fd}; close $fh;
}

# The set bits of a select vector, lowest first.
sub ready { my $bits = unpack('b*', shift); my @fds; my $i = -1; push @fds, $i while ($i = index($bits, '1', $i + 1)) >= 0; return @fds; }

sub errno_name { my $e = shift; for my $n (keys %!) { local $! = $e; return $n if $!{$n}; } return "E$e"; }

sub spawn_job {
  my ($id, $payload) = @_;
  my ($file, $cwd, $uid, $gid, $in_mode, $out_mode, $err_mode, $argc, @rest) = split /\0/, $payload, -1;
  my @argv = splice(@rest, 0, $argc);
  my @env = @rest;
  my (%r, %w);
  for my $s (1, 2) {
    my $mode = $s == 1 ? $out_mode : $err_mode;
    next unless $mode eq 'pipe';
    pipe($r{$s}, $w{$s}) or return say_line("F $id " . errno_name($! + 0) . " pipe: $!");
  }
  my ($in_r, $in_w);
  if ($in_mode eq 'pipe') { pipe($in_r, $in_w) or return say_line("F $id " . errno_name($! + 0) . " pipe: $!"); }
  pipe(my $st_r, my $st_w) or return say_line("F $id " . errno_name($! + 0) . " pipe: $!");
  my $pid = fork();
  if (!defined $pid) { return say_line("F $id " . errno_name($! + 0) . " fork: $!"); }
  if ($pid == 0) {
    # The child: own session and process group, stdio, ids, directory, environment, exec.
    # Perl opens every descriptor above 2 close-on-exec, so only 0-2 reach the job, and
    # the status pipe closes by itself when exec succeeds.
    $SIG{CHLD} = 'DEFAULT';
    my $fail = sub { my $what = shift; my $e = $! + 0; syswrite($st_w, errno_name($e) . " $what: $!"); POSIX::_exit(127); };
    POSIX::setsid() or $fail->('setsid');
    POSIX::dup2(fileno($in_mode eq 'pipe' ? $in_r : $null), 0) // $fail->('dup2');
    POSIX::dup2(fileno($out_mode eq 'pipe' ? $w{1} : $null), 1) // $fail->('dup2');
    POSIX::dup2(fileno($err_mode eq 'pipe' ? $w{2} : $err_mode eq 'stdout' ? $w{1} : $null), 2) // $fail->('dup2');
    if ($gid ne '') { POSIX::setgid($gid) or $fail->("setgid $gid"); }
    if ($uid ne '') {
      # Drop supplementary groups to the job's group, as libuv does, then the user.
      my $g = $gid ne '' ? $gid : (split ' ', $()[0];
      $) = "$g $g";
      POSIX::setuid($uid) or $fail->("setuid $uid");
    }
    if ($cwd ne '') { chdir($cwd) or $fail->("chdir $cwd"); }
    %ENV = ();
    for my $kv (@env) { my $i = index($kv, '='); $ENV{substr($kv, 0, $i)} = substr($kv, $i + 1) if $i > 0; }
    { no warnings 'exec'; exec { $file } @argv; }
    $fail->("exec $file");
  }
  close $w{$_} for keys %w;
  close $in_r if $in_r;
  close $st_w;
  my $job = $jobs{$id} = { pid => $pid, out => {}, inbuf => '' };
  $pid_id{$pid} = $id;
  $job->{status} = $st_r; nonblocking($st_r); watch($st_r, $id, 's');
  for my $s (keys %r) { $job->{out}{$s} = $r{$s}; nonblocking($r{$s}); watch($r{$s}, $id, $s); }
  if ($in_w) { $job->{in} = $in_w; nonblocking($in_w); $by_fd{fileno $in_w} = [$id, 'i']; }
}

# The status pipe: EOF means exec succeeded; bytes are the child's reason for not starting.
sub read_status {
  my ($id, $blocking) = @_;
  my $job = $jobs{$id} or return;
  my $fh = $job->{status} or return;
  if ($blocking) { my $f = fcntl($fh, F_GETFL, 0); fcntl($fh, F_SETFL, $f & ~O_NONBLOCK); }
  $job->{reason} //= '';
  while (1) {
    my $n = sysread($fh, my $buf, 4096);
    if (!defined $n) { next if $! == EINTR; return if $! == EAGAIN; last; }   # EAGAIN: the rest comes later
    last if $n == 0;
    $job->{reason} .= $buf;
  }
  my $msg = $job->{reason};
  unwatch($fh); delete $job->{status};
  if ($msg eq '') { say_line("P $id $job->{pid}"); }
  else { $job->{failed} = 1; $msg =~ s/\n/ /g; say_line("F $id $msg"); }
}

sub read_output {
  my ($id, $s) = @_;
  my $job = $jobs{$id} or return;
  my $fh = $job->{out}{$s} or return;
  my $n = sysread($fh, my $buf, 65536);
  if (!defined $n) { return if $! == EAGAIN || $! == EINTR; $n = 0; }
  if ($n == 0) { unwatch($fh); delete $job->{out}{$s}; say_line("E $id $s"); forget($id); return; }
  write_all("O $id $s $n\n$buf");
}

sub write_stdin {
  my $id = shift;
  my $job = $jobs{$id} or return;
  my $fh = $job->{in} or return;
  while (length $job->{inbuf}) {
    my $n = syswrite($fh, $job->{inbuf});
    if (!defined $n) { next if $! == EINTR; return if $! == EAGAIN; last; }   # EPIPE: it closed its stdin
    substr($job->{inbuf}, 0, $n, '');
  }
  unwatch($fh); delete $job->{in};
}

sub forget {
  my $id = shift;
  my $job = $jobs{$id} or return;
  return if defined $job->{pid} || %{$job->{out}} || $job->{status};
  unwatch($job->{in}) if $job->{in};
  delete $jobs{$id};
}

sub reap {
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $status = $?;
    my $id = delete $pid_id{$pid};
    next unless defined $id;
    my $job = $jobs{$id};
    kill 'KILL', -$pid;   # what the job left behind in its group (as the executor does for the node spawner)
    read_status($id, 1) if $job->{status};
    say_line("X $id $status") unless $job->{failed};
    $job->{pid} = undef;
    forget($id);
  }
}

my $inbuf = '';
sub handle_requests {
  while (1) {
    my $nl = index($inbuf, "\n");
    return if $nl < 0;
    my ($op, $id, $arg) = split / /, substr($inbuf, 0, $nl);
    my $need = ($op eq 'S' || $op eq 'I') ? $arg : 0;
    return if length($inbuf) < $nl + 1 + $need;
    my $payload = substr($inbuf, $nl + 1, $need);
    substr($inbuf, 0, $nl + 1 + $need, '');
    if ($op eq 'S') { spawn_job($id, $payload); }
    elsif ($op eq 'I') {
      my $job = $jobs{$id};
      if ($job && $job->{in}) { $job->{inbuf} .= $payload; vec($win, fileno $job->{in}, 1) = 1; }
    }
    elsif ($op eq 'H' || $op eq 'R' || $op eq 'D') {
      my $job = $jobs{$id} or next;
      my $fh = $job->{out}{$arg} or next;
      my $fd = fileno $fh;
      if ($op eq 'H') { vec($rin, $fd, 1) = 0; }      # not read until R: the job waits on its pipe
      elsif ($op eq 'R') { vec($rin, $fd, 1) = 1; }
      else { unwatch($fh); delete $job->{out}{$arg}; forget($id); }
    }
  }
}

say_line("READY $$");
while (1) {
  my ($rout, $wout) = ($rin, $win);
  my $n = select($rout, $wout, undef, 1.0);
  if ($n < 0) { reap(); next; }
  if (vec($rout, fileno($sig_r), 1)) { sysread($sig_r, my $drain, 4096); }
  if (vec($rout, fileno(STDIN), 1)) {
    my $got = sysread(STDIN, $inbuf, 1 << 20, length $inbuf);
    if (defined $got && $got == 0) { exit 0; }   # the agent closed us: it is stopping or gone
    handle_requests() if $got;
  }
  # Only the descriptors select marked, in ascending order (stdout before stderr of a job).
  for my $fd (ready($wout)) { my $entry = $by_fd{$fd} or next; write_stdin($entry->[0]) if $entry->[1] eq 'i'; }
  for my $fd (ready($rout)) {
    my $entry = $by_fd{$fd} or next;
    my ($id, $kind) = @$entry;
    if ($kind eq 's') { read_status($id, 0); }
    elsif ($kind ne 'i') { read_output($id, $kind); }
  }
  reap();
}
`;
