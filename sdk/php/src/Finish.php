<?php

declare(strict_types=1);

namespace Hotsock;

/** A task's result nobody awaits, for `App::onFinish`. */
final class Finish
{
    public function __construct(
        public readonly int $task,
        /** The dispatcher is gone; this worker is its slot's successor. */
        public readonly bool $orphaned,
        /** The task handler failed; the payload is its message. */
        public readonly bool $failed,
        public readonly string $payload,
    ) {
    }
}
