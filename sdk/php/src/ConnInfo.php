<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;

/** Details of an open connection. */
final class ConnInfo
{
    public function __construct(
        public readonly int $conn,
        public readonly string $peer,
        public readonly string $path,
        public readonly ?int $uid,
        public readonly int $connectedAtUnixMs,
        public readonly int $slot,
    ) {
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'ConnInfo reply');
        $conn = $r->u64();
        $peer = $r->string();
        $path = $r->string();
        $hasUid = $r->u8() !== 0;
        $uid = $r->u64();
        return new self($conn, $peer, $path, $hasUid ? $uid : null, $r->u64(), $r->u32());
    }
}
