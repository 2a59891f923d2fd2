<?php

declare(strict_types=1);

namespace Hotsock;

/** A connection was opened; pushes to it are delivered from now on. */
final class Open
{
    public function __construct(public readonly int $conn, public readonly bool $redelivered)
    {
    }
}
