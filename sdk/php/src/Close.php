<?php

declare(strict_types=1);

namespace Hotsock;

/** The connection is gone; the last event of the connection. */
final class Close
{
    public function __construct(
        public readonly int $conn,
        public readonly bool $redelivered,
        /** WebSocket close code (1006: the client vanished without one). */
        public readonly int $code,
        public readonly string $reason,
    ) {
    }
}
