<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;

/** The outcome of a subscribe. */
final class Subscribed
{
    public function __construct(
        /** A position was given and everything after it was replayed. */
        public readonly bool $recovered,
        /** The channel's position when the subscription took effect. */
        public readonly Position $position,
        public readonly int $replayed,
    ) {
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'Subscribed');
        $recovered = $r->u8() !== 0;
        $epoch = $r->u64();
        $offset = $r->u64();
        return new self($recovered, new Position($epoch, $offset), $r->u32());
    }
}
