<?php

declare(strict_types=1);

namespace Hotsock;

/** A connection left a channel: unsubscribed, or closed (then before its Close). */
final class Leave
{
    public function __construct(public readonly int $conn, public readonly bool $redelivered, public readonly string $channel)
    {
    }
}
