<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\Disconnected;

/**
 * The worker's end of its Unix socket, which the server made our stdin
 * (fd 0). Read and written through ext/sockets, never through PHP streams:
 * a stream would read ahead into its own buffer, and the first byte must be
 * taken with recvmsg to receive the table descriptors riding on it.
 */
final class Transport
{
    /** Bytes asked for per read: at least one large frame's worth of small ones. */
    private const READ_BYTES = 256 << 10;
    /** `hotsock_table::FILES_MAX`: the most table descriptors the server sends. */
    private const FILES_MAX = 64;

    private function __construct(private readonly \Socket $socket)
    {
    }

    public static function fromStdin(): self
    {
        $socket = socket_import_stream(STDIN);
        if ($socket === false) {
            throw new Disconnected('stdin is not the hotsock worker socket');
        }
        return new self($socket);
    }

    /**
     * The preamble: exactly one byte (value 0) whose SCM_RIGHTS ancillary
     * data carries one descriptor per shared table (none without tables).
     *
     * @return list<mixed> the descriptors, as ext/sockets hands them over
     */
    public function receivePreamble(): array
    {
        $message = [
            'name' => [],
            'buffer_size' => 1,
            'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, self::FILES_MAX) ?? 0,
        ];
        $got = @socket_recvmsg($this->socket, $message, 0);
        if ($got !== 1) {
            throw new Disconnected('the server closed before the table preamble');
        }
        $files = [];
        foreach ($message['control'] ?? [] as $control) {
            if (($control['level'] ?? null) === SOL_SOCKET && ($control['type'] ?? null) === SCM_RIGHTS) {
                foreach ($control['data'] as $fd) {
                    $files[] = $fd;
                }
            }
        }
        if ((($message['flags'] ?? 0) & MSG_CTRUNC) !== 0) {
            throw new Disconnected('too many table descriptors (control message truncated)');
        }
        return $files;
    }

    /**
     * Waits up to `$timeout` seconds (null: forever) for bytes.
     *
     * @return string|null the bytes read, or null when nothing came in time
     * @throws Disconnected at EOF: the server is gone
     */
    public function read(?float $timeout): ?string
    {
        $read = [$this->socket];
        $write = null;
        $except = null;
        $seconds = $timeout === null ? null : (int) $timeout;
        $micros = $timeout === null ? 0 : (int) (($timeout - (int) $timeout) * 1e6);
        $ready = @socket_select($read, $write, $except, $seconds, $micros);
        if ($ready === false) {
            // EINTR from a signal: the caller's loop just looks again.
            return null;
        }
        if ($ready === 0) {
            return null;
        }
        $bytes = '';
        $got = socket_recv($this->socket, $bytes, self::READ_BYTES, 0);
        if ($got === false || $got === 0 || $bytes === null) {
            throw new Disconnected('the server closed the worker socket');
        }
        return $bytes;
    }

    /** Writes all of `$bytes` (blocking: the server always reads). */
    public function write(string $bytes): void
    {
        $length = strlen($bytes);
        $written = 0;
        while ($written < $length) {
            $n = @socket_write($this->socket, $written === 0 ? $bytes : substr($bytes, $written));
            if ($n === false) {
                throw new Disconnected('write to the server failed: ' . socket_strerror(socket_last_error($this->socket)));
            }
            $written += $n;
        }
    }
}
