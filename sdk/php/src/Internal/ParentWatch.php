<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\Disconnected;

/**
 * Asks the kernel to SIGKILL this worker when the server dies
 * (PR_SET_PDEATHSIG, through FFI when it is enabled), then checks that the
 * server did not die before we asked. Without FFI the worker still exits
 * at the socket's EOF, unless a handler is holding the loop then.
 */
final class ParentWatch
{
    private const PR_SET_PDEATHSIG = 1;
    private const SIGKILL = 9;

    public static function arm(): void
    {
        if (class_exists(\FFI::class)) {
            try {
                $libc = \FFI::cdef('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);', 'libc.so.6');
                /** @phpstan-ignore-next-line FFI methods are declared by cdef */
                $libc->prctl(self::PR_SET_PDEATHSIG, self::SIGKILL, 0, 0, 0);
            } catch (\Throwable) {
                // FFI disabled by ffi.enable, or no glibc: EOF still ends us.
            }
        }
        $expected = getenv('HOTSOCK_SERVER_PID');
        if ($expected !== false && function_exists('posix_getppid') && posix_getppid() !== (int) $expected) {
            throw new Disconnected('the server that started this worker is gone');
        }
    }
}
