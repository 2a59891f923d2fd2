<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\Scheduler;
use Hotsock\Internal\Wait;

/** A dispatched task: its id, and its result via `result()`; dropped unread, the result goes to `App::onFinish`. */
final class TaskHandle
{
    private bool $read = false;

    public function __construct(private readonly Scheduler $scheduler, public readonly int $id)
    {
        $scheduler->claimTask($id, $this);
    }

    /**
     * Waits for the task's result (other connections' handlers run meanwhile).
     *
     * @throws TaskFailed when the task handler failed
     */
    public function result(): string
    {
        $this->scheduler->wait(Wait::finish($this->id));
        $finish = $this->scheduler->takeFinish($this->id);
        $this->read = true;
        if ($finish->failed) {
            throw new TaskFailed($finish->payload);
        }
        return $finish->payload;
    }

    public function __destruct()
    {
        if (!$this->read) {
            $this->scheduler->dropTask($this->id);
        }
    }
}
