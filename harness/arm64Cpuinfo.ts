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

/** binfmt_misc, where the kernel is told how to run another architecture's binaries. */
const BINFMT = '/proc/sys/fs/binfmt_misc';
/** Our entry's name there (removed again after the run). */
const BINFMT_ENTRY = 'mobillm-aarch64';
/** An aarch64 ELF executable's header as binfmt_misc matches it (ELF64, little-endian, e_machine 0xb7), and the bytes that matter. */
const AARCH64_MAGIC = '\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00';
const AARCH64_MASK = '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff';

/**
 * Lets an emulated arm64 process start arm64 children (the embedded server's
 * process): qemu-user does not follow execve, so the kernel is told, through
 * binfmt_misc, to run aarch64 binaries with `qemu` (their libraries found
 * through QEMU_LD_PREFIX in the environment the children inherit). Needs root
 * and binfmt_misc; returns how to undo it, or why it could not (the run's
 * children then fail to start, and the test says so).
 */
export function allowArm64Children(qemu: string): { undo: () => void } | { why: string } {
  try {
    if (!fs.existsSync(path.join(BINFMT, 'register'))) {
      const mounted = spawnSync('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { encoding: 'utf8' });
      if (mounted.status !== 0) return { why: `binfmt_misc is not mounted and could not be (${(mounted.stderr || '').trim().split('\n')[0]})` };
    }
    const already = fs.readdirSync(BINFMT).find((n) => n !== BINFMT_ENTRY && /aarch64/.test(n) && /^enabled/.test(fs.readFileSync(path.join(BINFMT, n), 'utf8')));
    if (already) return { undo: () => undefined };
    if (!fs.existsSync(path.join(BINFMT, BINFMT_ENTRY))) fs.writeFileSync(path.join(BINFMT, 'register'), `:${BINFMT_ENTRY}:M::${AARCH64_MAGIC}:${AARCH64_MASK}:${qemu}:F`);
    return { undo: () => fs.writeFileSync(path.join(BINFMT, BINFMT_ENTRY), '-1') };
  } catch (err) {
    return { why: `binfmt_misc refused the entry (${err instanceof Error ? err.message : String(err)}); root is needed` };
  }
}
