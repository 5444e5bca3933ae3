import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * qemu-user (Debian's 7.2) shows an emulated arm64 process the host's own
 * `/proc/cpuinfo`: x86 text on an x86 host. ONNX Runtime's arm64 build reads
 * that file at `require()` to learn the CPU's cores, and on some x86 hosts
 * (seen on AMD EPYC machines) the text it finds makes it crash with
 * SIGSEGV, so whether the arm64 run passed depended on the host. Here an
 * emulated process gets a `/proc/cpuinfo` as an arm64 Linux kernel writes
 * it, bind-mounted over the real one in a private mount namespace that only
 * the emulated process sees (the host's file is never touched).
 */

/** The CPU ids in a sysfs range list such as `0-3,6`. */
function cpuIds(list: string): number[] {
  const ids: number[] = [];
  for (const part of list.trim().split(',').filter((p) => p.length > 0)) {
    const [from, to] = part.split('-').map(Number);
    for (let i = from!; i <= (to ?? from!); i++) ids.push(i);
  }
  return ids;
}

/** `/proc/cpuinfo` as an arm64 kernel writes it, one Neoverse-N1-like core per CPU the host presents (the same ids qemu shows in /sys). */
export function arm64Cpuinfo(presentList: string): string {
  const core = (id: number): string =>
    [
      `processor\t: ${id}`,
      'BogoMIPS\t: 50.00',
      'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp',
      'CPU implementer\t: 0x41',
      'CPU architecture: 8',
      'CPU variant\t: 0x3',
      'CPU part\t: 0xd0c',
      'CPU revision\t: 1',
      '',
    ].join('\n');
  return `${cpuIds(presentList).map(core).join('\n')}\n`;
}

/** How an emulated arm64 command is run: the command line, and how its `/proc/cpuinfo` was made arm64 (or why it could not be). */
export interface EmulatedCommand {
  cmd: string;
  args: string[];
  /** 'bind-mount' (root), 'user-namespace' (unprivileged, where the kernel allows it), or undefined with `why`. */
  how: 'bind-mount' | 'user-namespace' | undefined;
  why?: string;
}

/**
 * `cmd args` wrapped so that it sees an arm64 `/proc/cpuinfo` written into
 * `dir`: `unshare -m` as root, `unshare -r -m` otherwise; when neither is
 * allowed, the bare command with the reason (the run then sees the host's
 * file, as before).
 */
export function withArm64Cpuinfo(dir: string, cmd: string, args: string[]): EmulatedCommand {
  const file = path.join(dir, 'cpuinfo-arm64');
  fs.writeFileSync(file, arm64Cpuinfo(fs.readFileSync('/sys/devices/system/cpu/present', 'utf8')));
  // $0 is the file, "$@" the command: no path is put into the shell's text.
  const script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"';
  const tries: { how: 'bind-mount' | 'user-namespace'; flags: string[] }[] = [
    ...(process.getuid?.() === 0 ? [{ how: 'bind-mount' as const, flags: ['-m'] }] : []),
    { how: 'user-namespace', flags: ['-r', '-m'] },
  ];
  const failures: string[] = [];
  for (const t of tries) {
    const probe = spawnSync('unshare', [...t.flags, 'sh', '-c', `${script}`, file, 'grep', '-q', 'CPU implementer', '/proc/cpuinfo'], { encoding: 'utf8' });
    if (probe.status === 0) return { cmd: 'unshare', args: [...t.flags, 'sh', '-c', script, file, cmd, ...args], how: t.how };
    failures.push(`unshare ${t.flags.join(' ')}: ${(probe.stderr || probe.error?.message || `exit ${probe.status}`).trim().split('\n')[0]}`);
  }
  return { cmd, args, how: undefined, why: failures.join('; ') };
}
