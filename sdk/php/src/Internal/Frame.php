<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/** One decoded frame: the 22-byte header's fields and the payload. */
final class Frame
{
    public function __construct(
        public readonly int $kind,
        public readonly int $flags,
        public readonly int $conn,
        public readonly int $id,
        public readonly string $payload,
    ) {
    }

    public function redelivered(): bool
    {
        return ($this->flags & Kind::REDELIVERED) !== 0;
    }

    public function has(int $flag): bool
    {
        return ($this->flags & $flag) !== 0;
    }

    /** Encodes a frame for the server. u64 fields are PHP ints holding the same 64 bits. */
    public static function encode(int $kind, int $flags, int $conn, int $id, string $payload = ''): string
    {
        return pack('VCCPP', strlen($payload), $kind, $flags, $conn, $id) . $payload;
    }
}
