<?php

declare(strict_types=1);

namespace Hotsock;

/**
 * Your service, as the Rust SDK's `App` trait. Extend `BaseApp` to get a
 * no-op default for every callback and implement only what you need.
 *
 * Capabilities are class constants, overridden in your class:
 * - HANDLES_HANDSHAKE: `onHandshake` decides upgrades (else the server accepts every well-formed one).
 * - HANDOFF: `onWorkerStop` returns state for the slot's next worker, which gets it in `onWorkerStart`.
 * - CHANNEL_EVENTS: `onJoin`/`onLeave` are called when a connection enters or leaves a channel.
 */
interface App
{
    public const HANDLES_HANDSHAKE = false;
    public const HANDOFF = false;
    public const CHANNEL_EVENTS = false;

    /**
     * Runs once before the worker says Ready: load code-dependent state here.
     * A worker that throws here never receives an event (and a reload to its
     * code is aborted). `$handoff` is the previous worker's `onWorkerStop` state.
     */
    public function onWorkerStart(Ctx $ctx, ?string $handoff): void;

    /** Runs once when the worker is replaced or stopped, after its last event; with HANDOFF the returned state goes to the successor. */
    public function onWorkerStop(Ctx $ctx): ?string;

    public function onHandshake(Ctx $ctx, Handshake $handshake): Decision;

    public function onOpen(Ctx $ctx, Open $open): void;

    public function onMessage(Ctx $ctx, Message $message): void;

    public function onClose(Ctx $ctx, Close $close): void;

    public function onJoin(Ctx $ctx, Join $join): void;

    public function onLeave(Ctx $ctx, Leave $leave): void;

    /** Task workers run tasks here; the returned bytes go back to the dispatcher. */
    public function onTask(Ctx $ctx, Task $task): string;

    /** A task result nobody awaits (its TaskHandle was dropped unread, or the dispatcher is gone). */
    public function onFinish(Ctx $ctx, Finish $finish): void;
}
