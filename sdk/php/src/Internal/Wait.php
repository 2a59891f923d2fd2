<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/** What a suspended handler waits for: a time, a Reply by request id, or a task's Finish. */
final class Wait
{
    public const TIMER = 0;
    public const REPLY = 1;
    public const FINISH = 2;

    private function __construct(public readonly int $type, public readonly int $key, public readonly float $deadline)
    {
    }

    /** Until `hrtime` seconds reach `$deadline`. */
    public static function until(float $deadline): self
    {
        return new self(self::TIMER, 0, $deadline);
    }

    public static function reply(int $request): self
    {
        return new self(self::REPLY, $request, 0.0);
    }

    public static function finish(int $task): self
    {
        return new self(self::FINISH, $task, 0.0);
    }

    public static function now(): float
    {
        return hrtime(true) / 1e9;
    }
}
