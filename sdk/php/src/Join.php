<?php

declare(strict_types=1);

namespace Hotsock;

/** A connection joined a channel (apps with CHANNEL_EVENTS). */
final class Join
{
    public function __construct(public readonly int $conn, public readonly bool $redelivered, public readonly string $channel)
    {
    }
}
