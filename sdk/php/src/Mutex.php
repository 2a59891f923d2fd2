<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\Scheduler;
use Hotsock\Internal\Wait;

/**
 * A lock for the handlers of one worker process (`Ctx::mutex`): `lock()`
 * waits, without polling and without holding the loop, until the handlers
 * that asked before have unlocked it, in the order they asked. For state
 * shared by the handlers of this worker only (its fibers); the shared
 * tables need none (each operation is atomic) or a row of their own
 * across processes. A handler that ends holding it keeps it held.
 */
final class Mutex
{
    private bool $held = false;
    /** @var list<int> requests of the waiting handlers, first come first */
    private array $waiting = [];

    public function __construct(private readonly Scheduler $scheduler)
    {
    }

    public function lock(): void
    {
        if (!$this->held) {
            $this->held = true;
            return;
        }
        $ticket = $this->scheduler->nextRequest();
        $this->scheduler->expect($ticket);
        $this->waiting[] = $ticket;
        $this->scheduler->wait(Wait::reply($ticket));
        // Handed over by unlock(): held all along, now ours.
        $this->scheduler->takeReply($ticket);
    }

    public function unlock(): void
    {
        $next = array_shift($this->waiting);
        if ($next === null) {
            $this->held = false;
            return;
        }
        $this->scheduler->resolve($next);
    }
}
