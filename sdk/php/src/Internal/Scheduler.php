<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\Finish;
use Hotsock\ProtocolError;

/**
 * Runs handlers as fibers: one lane per connection (or task), so a
 * connection's events run one at a time and in order, while events of
 * different connections interleave whenever a handler waits (`Ctx::sleep`,
 * a query, a task result), up to Hello's `max_concurrency`. PHP runs one
 * fiber at a time; a handler that computes without waiting holds the
 * loop, which the server's heartbeat notices, as the protocol intends.
 *
 * It also routes what arrives between events: Replies and Finishes to the
 * handler waiting for them, Pings to a Pong from this loop, Stop and
 * Snapshot to flags the runtime acts on once idle.
 *
 * The one rule: an event is acknowledged after its handler returned, its
 * ack queued behind the frames the handler sent; and around redelivered
 * events, an ack is written before the lane's next event starts.
 */
final class Scheduler
{
    /**
     * Idle fibers kept for the next handler. Making a fiber maps a fresh C
     * stack (mmap, mprotect, page faults on first use) and freeing one
     * unmaps it, with a TLB flush: `perf` put that at about 40% of an echo
     * worker's CPU when every event had a fiber of its own. A pooled fiber
     * runs one job after another (`runner`); this many wait between jobs.
     */
    private const FIBER_POOL_MAX = 64;

    /** @var array<int, list<Event>> events waiting per lane, oldest first */
    private array $lanes = [];
    /** @var array<int, true> lanes whose event is running */
    private array $busy = [];
    /** @var array<int, array{fiber:\Fiber, wait:Wait, event:?Event, job:int}> suspended handlers by fiber id */
    private array $suspended = [];
    /**
     * Who waits for what, so an arrival wakes its handler without a look
     * at every suspended one (a worker may hold hundreds waiting on a lock).
     *
     * @var array<int, int> request id => fiber id
     */
    private array $byReply = [];
    /** @var array<int, int> task id => fiber id */
    private array $byFinish = [];
    /** @var array<int, float> fiber id => deadline, for the handlers in `sleep` */
    private array $byTimer = [];
    /** @var array<int, true> fiber ids whose wait is satisfied, in that order */
    private array $runnable = [];
    /** @var array<int, bool> lanes with an ack not yet written, and whether that event was redelivered */
    private array $unwrittenAck = [];
    private int $running = 0;
    private ?\Fiber $current = null;
    /** The running handler's job number (0 outside one): who a table's posted writes belong to. */
    private int $currentJob = 0;
    private int $jobs = 0;
    /** @var list<\Fiber> fibers between jobs, suspended at the top of `runner`'s loop */
    private array $idleFibers = [];
    /** @var list<\Closure(int): void> called with a job's number when it ends (tables let go of its posted writes) */
    private array $jobEndHooks = [];
    /** @var array<int, string> requests whose handler ended before reading the answer => what to name in a refusal */
    private array $orphans = [];

    /** @var array<int, array{0:bool,1:string}> replies by request id: (not found, body) */
    private array $replies = [];
    /** @var array<int, true|\WeakReference> requests whose reply someone may still read */
    private array $wanted = [];
    /** @var array<int, true> DispatchTask requests, whose Reply names a task id */
    private array $taskRequests = [];
    /** @var array<int, true|\WeakReference> task ids whose TaskHandle may still read the result */
    private array $taskWanted = [];
    /** @var array<int, Finish> results waiting for their TaskHandle */
    private array $finishes = [];
    /** @var list<Finish> results for `App::onFinish` */
    private array $unclaimed = [];

    /** @var array<int, array{period:float, next:float, job:\Closure, running:bool}> periodic jobs (`Ctx::every`) */
    private array $timers = [];

    private int $nextRequest = 1;
    public bool $stopRequested = false;
    public bool $snapshotRequested = false;
    /** Set when an event arrives: a worker resumed after a Snapshot runs `onWorkerStop` again at Stop. */
    public bool $eventSinceStop = false;

    private ?Handlers $handlers = null;

    public function __construct(
        private readonly Transport $transport,
        private readonly Decoder $decoder,
        private readonly Outbox $out,
        private readonly int $maxConcurrency,
    ) {
    }

    public function attach(Handlers $handlers): void
    {
        $this->handlers = $handlers;
    }

    public function nextRequest(): int
    {
        return $this->nextRequest++;
    }

    /** Runs everything runnable: resumes satisfied waits, starts waiting lanes and unclaimed results. */
    public function turn(): void
    {
        do {
            $progressed = false;
            $now = null;
            foreach ($this->byTimer as $key => $deadline) {
                if ($deadline <= ($now ??= Wait::now())) {
                    unset($this->byTimer[$key]);
                    $this->runnable[$key] = true;
                }
            }
            while ($this->runnable !== []) {
                $key = array_key_first($this->runnable);
                unset($this->runnable[$key]);
                $entry = $this->suspended[$key];
                unset($this->suspended[$key]);
                $this->step($entry['fiber'], $entry['event'], $entry['job'], fn (\Fiber $f) => $f->resume());
                $progressed = true;
            }
            foreach (array_keys($this->lanes) as $lane) {
                if ($this->running >= $this->maxConcurrency) {
                    break;
                }
                if (!isset($this->busy[$lane])) {
                    $this->startLane($lane);
                    $progressed = true;
                }
            }
            if ($this->startTimers()) {
                $progressed = true;
            }
            while ($this->unclaimed !== [] && $this->running < $this->maxConcurrency) {
                $finish = array_shift($this->unclaimed);
                $handlers = $this->handlers();
                $this->run(static fn () => $handlers->finish($finish), null);
                $progressed = true;
            }
        } while ($progressed);
    }

    /** Registers a periodic job: first run `$period` seconds from now. */
    public function every(float $period, \Closure $job): void
    {
        $this->timers[] = ['period' => $period, 'next' => Wait::now() + $period, 'job' => $job, 'running' => false];
    }

    /** Starts the periodic jobs that are due; none once Stop or Snapshot came, so the worker can become idle. */
    private function startTimers(): bool
    {
        if ($this->timers === [] || $this->stopRequested || $this->snapshotRequested) {
            return false;
        }
        $now = Wait::now();
        $started = false;
        foreach ($this->timers as $n => $timer) {
            if ($timer['running'] || $now < $timer['next']) {
                continue;
            }
            $this->timers[$n]['running'] = true;
            $job = $timer['job'];
            $run = function () use ($n, $job): void {
                try {
                    $job();
                } catch (\Throwable $error) {
                    Log::line('periodic job failed: ' . Handlers::describe($error));
                } finally {
                    $this->timers[$n]['running'] = false;
                    $this->timers[$n]['next'] = Wait::now() + $this->timers[$n]['period'];
                }
            };
            $this->run($run, null);
            $started = true;
        }
        return $started;
    }

    private function startLane(int $lane): void
    {
        $event = array_shift($this->lanes[$lane]);
        if ($this->lanes[$lane] === []) {
            unset($this->lanes[$lane]);
        }
        // When this event or the one before it in its lane is a redelivery,
        // the earlier ack goes out first: if this event kills the worker,
        // the server must blame it, not the finished one.
        if (isset($this->unwrittenAck[$lane]) && ($this->unwrittenAck[$lane] || $event->redelivered)) {
            $this->flush();
        }
        $this->busy[$lane] = true;
        $handlers = $this->handlers();
        $this->run(static fn () => $handlers->event($event), $event);
    }

    /** Calls `$hook` with each job's number when the job ends. */
    public function onJobEnd(\Closure $hook): void
    {
        $this->jobEndHooks[] = $hook;
    }

    /**
     * A request whose handler ended without reading the answer (a posted
     * table write nobody settled): the answer is dropped, and a refusal,
     * which nobody else will see, is logged naming `$what`.
     */
    public function orphan(int $request, string $what): void
    {
        if (isset($this->replies[$request])) {
            [$refused, $body] = $this->takeReply($request);
            self::logOrphan($what, $refused, $body);
        } elseif (isset($this->wanted[$request])) {
            $this->orphans[$request] = $what;
        }
    }

    private static function logOrphan(string $what, bool $refused, string $body): void
    {
        if ($refused) {
            $error = \Hotsock\TableError::decode($body);
            Log::line("a posted write to {$what} was refused and its handler ended without settle(): {$error->getMessage()}");
        }
    }

    /** The number of the handler running now, 0 outside one (a table files its posted writes under it). */
    public function job(): int
    {
        return $this->currentJob;
    }

    /** Runs `$job` in a pooled fiber (a new one when none is idle) until it waits or ends. */
    private function run(\Closure $job, ?Event $event): void
    {
        $this->running++;
        $fiber = array_pop($this->idleFibers);
        $number = ++$this->jobs;
        if ($fiber === null) {
            $this->step(new \Fiber(self::runner()), $event, $number, fn (\Fiber $f) => $f->start($job));
        } else {
            $this->step($fiber, $event, $number, fn (\Fiber $f) => $f->resume($job));
        }
    }

    /**
     * A pooled fiber's body: runs the job it was started or resumed with,
     * then suspends with null (a handler waiting suspends with its Wait)
     * until the scheduler resumes it with the next one.
     */
    private static function runner(): \Closure
    {
        return static function (\Closure $job): void {
            while (true) {
                $job();
                // Let go of the finished job (its event, its captures)
                // while the fiber waits in the pool.
                $job = null;
                $job = \Fiber::suspend(null);
            }
        };
    }

    /** Starts or resumes `$fiber` until its job waits or ends; an ended event is acknowledged. */
    private function step(\Fiber $fiber, ?Event $event, int $job, \Closure $go): void
    {
        $this->current = $fiber;
        $this->currentJob = $job;
        try {
            $wait = $go($fiber);
        } finally {
            $this->current = null;
            $this->currentJob = 0;
        }
        if ($wait instanceof Wait) {
            $key = spl_object_id($fiber);
            $this->suspended[$key] = ['fiber' => $fiber, 'wait' => $wait, 'event' => $event, 'job' => $job];
            if ($this->satisfied($wait)) {
                $this->runnable[$key] = true;
            } else {
                match ($wait->type) {
                    Wait::TIMER => $this->byTimer[$key] = $wait->deadline,
                    Wait::REPLY => $this->byReply[$wait->key] = $key,
                    Wait::FINISH => $this->byFinish[$wait->key] = $key,
                };
            }
            return;
        }
        // The job ended; its fiber, suspended between jobs, goes back to
        // the pool (a job that threw ended the fiber, and `$go` rethrew).
        $this->running--;
        foreach ($this->jobEndHooks as $hook) {
            $hook($job);
        }
        if (!$fiber->isTerminated() && count($this->idleFibers) < self::FIBER_POOL_MAX) {
            $this->idleFibers[] = $fiber;
        }
        if ($event !== null) {
            $this->out->ack($event->id);
            $this->unwrittenAck[$event->lane] = $event->redelivered;
            unset($this->busy[$event->lane]);
        }
    }

    private function handlers(): Handlers
    {
        return $this->handlers ?? throw new \LogicException('scheduler used before attach()');
    }

    public function idle(): bool
    {
        return $this->running === 0 && $this->lanes === [] && $this->unclaimed === [];
    }

    /** Writes everything queued, acks last. */
    public function flush(): void
    {
        $this->out->flush();
        $this->unwrittenAck = [];
    }

    /** How long the loop may block: 0 when something can run, until the nearest timer, or forever. */
    public function timeout(): ?float
    {
        if ($this->runnable !== []) {
            return 0.0;
        }
        $nearest = $this->byTimer === [] ? null : min($this->byTimer);
        if (!$this->stopRequested && !$this->snapshotRequested) {
            foreach ($this->timers as $timer) {
                if (!$timer['running']) {
                    $nearest = min($nearest ?? PHP_FLOAT_MAX, $timer['next']);
                }
            }
        }
        return $nearest === null ? null : max(0.0, $nearest - Wait::now());
    }

    /**
     * Suspends the calling handler until `$wait` is satisfied. Outside a
     * handler (in onWorkerStart or onWorkerStop) it reads the socket right
     * here instead, queueing events for later and answering Pings.
     */
    public function wait(Wait $wait): void
    {
        if ($this->current !== null && \Fiber::getCurrent() === $this->current) {
            \Fiber::suspend($wait);
            return;
        }
        while (!$this->satisfied($wait)) {
            $this->flush();
            $timeout = $wait->type === Wait::TIMER ? max(0.0, $wait->deadline - Wait::now()) : null;
            $this->pump($timeout);
        }
    }

    private function satisfied(Wait $wait): bool
    {
        return match ($wait->type) {
            Wait::TIMER => Wait::now() >= $wait->deadline,
            Wait::REPLY => isset($this->replies[$wait->key]),
            Wait::FINISH => isset($this->finishes[$wait->key]),
        };
    }

    /** Handles frames already decoded, or else waits up to `$timeout` for bytes and handles those. */
    public function pump(?float $timeout): void
    {
        if ($this->dispatchBuffered()) {
            return;
        }
        $bytes = $this->transport->read($timeout);
        if ($bytes !== null) {
            $this->decoder->feed($bytes);
            $this->dispatchBuffered();
        }
    }

    private function dispatchBuffered(): bool
    {
        $any = false;
        while (($frame = $this->decoder->next()) !== null) {
            $this->dispatch($frame);
            $any = true;
        }
        return $any;
    }

    private function dispatch(Frame $frame): void
    {
        if (isset(Kind::EVENTS[$frame->kind])) {
            $event = Event::decode($frame);
            $this->lanes[$event->lane][] = $event;
            $this->eventSinceStop = true;
            return;
        }
        match ($frame->kind) {
            // Answered from the loop handlers run on: a handler that holds
            // the loop stops the answers, which is what the server watches.
            Kind::PING => $this->out->frame(Kind::PONG, 0, 0, $frame->id),
            Kind::REPLY => $this->reply($frame),
            Kind::FINISH => $this->finish(new Finish($frame->conn, $frame->has(Kind::ORPHANED), $frame->has(Kind::FAILED), $frame->payload)),
            Kind::STOP => $frame->payload === '' ? $this->stopRequested = true : throw new ProtocolError('Stop with a payload'),
            Kind::SNAPSHOT => $frame->payload === '' ? $this->snapshotRequested = true : throw new ProtocolError('Snapshot with a payload'),
            Kind::HELLO => throw new ProtocolError('a second Hello'),
            default => throw new ProtocolError(sprintf('unexpected frame kind 0x%02x', $frame->kind)),
        };
    }

    private function reply(Frame $frame): void
    {
        $id = $frame->id;
        $notFound = $frame->has(Kind::NOT_FOUND);
        if (isset($this->taskRequests[$id])) {
            unset($this->taskRequests[$id]);
            // Filed now, before any later frame (the result) is read.
            if (!$notFound && strlen($frame->payload) === 8) {
                $this->taskWanted[unpack('P', $frame->payload)[1]] = true;
            }
        }
        $wanted = $this->wanted[$id] ?? null;
        unset($this->wanted[$id]);
        if (isset($this->orphans[$id])) {
            $what = $this->orphans[$id];
            unset($this->orphans[$id]);
            self::logOrphan($what, $notFound, $frame->payload);
            return;
        }
        if ($wanted === true || ($wanted instanceof \WeakReference && $wanted->get() !== null)) {
            $this->replies[$id] = [$notFound, $frame->payload];
            $this->wake($this->byReply, $id);
        }
    }

    private function finish(Finish $finish): void
    {
        $wanted = $this->taskWanted[$finish->task] ?? null;
        if ($wanted === true || ($wanted instanceof \WeakReference && $wanted->get() !== null)) {
            $this->finishes[$finish->task] = $finish;
            $this->wake($this->byFinish, $finish->task);
            return;
        }
        unset($this->taskWanted[$finish->task]);
        $this->unclaimed[] = $finish;
    }

    /** @param array<int, int> $waiters key => fiber id: the one waiting for `$key` becomes runnable. */
    private function wake(array &$waiters, int $key): void
    {
        if (isset($waiters[$key])) {
            $this->runnable[$waiters[$key]] = true;
            unset($waiters[$key]);
        }
    }

    /** Registers a request whose reply is read by whoever holds `$holder` (null: the caller, right away). */
    public function expect(int $request, ?object $holder = null, bool $task = false): void
    {
        $this->wanted[$request] = $holder === null ? true : \WeakReference::create($holder);
        if ($task) {
            $this->taskRequests[$request] = true;
        }
    }

    /** Satisfies a request of this process's own (a `Mutex` handing over): no frame travels. */
    public function resolve(int $request): void
    {
        if (isset($this->wanted[$request])) {
            unset($this->wanted[$request]);
            $this->replies[$request] = [false, ''];
            $this->wake($this->byReply, $request);
        }
    }

    /** @return array{0:bool,1:string} (not found, body) of an arrived reply */
    public function takeReply(int $request): array
    {
        $reply = $this->replies[$request] ?? throw new \LogicException("no reply {$request}");
        unset($this->replies[$request]);
        return $reply;
    }

    /** A reply nobody will read: dropped now or when it arrives. */
    public function forget(int $request): void
    {
        unset($this->wanted[$request], $this->replies[$request]);
    }

    public function claimTask(int $task, object $handle): void
    {
        $this->taskWanted[$task] = \WeakReference::create($handle);
    }

    public function takeFinish(int $task): Finish
    {
        $finish = $this->finishes[$task] ?? throw new \LogicException("no result for task {$task}");
        unset($this->finishes[$task], $this->taskWanted[$task]);
        return $finish;
    }

    /** A TaskHandle went away unread: its result, now or later, goes to `App::onFinish`. */
    public function dropTask(int $task): void
    {
        unset($this->taskWanted[$task]);
        if (isset($this->finishes[$task])) {
            $this->unclaimed[] = $this->finishes[$task];
            unset($this->finishes[$task]);
        }
    }
}
