<?php

declare(strict_types=1);

namespace Hotsock;

/** A task to run (task workers): its result goes back to the worker that called `Ctx::task()`. */
final class Task
{
    public function __construct(
        public readonly int $id,
        /** A task worker died running it before; its result is still delivered once. */
        public readonly bool $redelivered,
        public readonly string $payload,
    ) {
    }
}
