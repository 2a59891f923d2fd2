<?php

declare(strict_types=1);

namespace Hotsock;

/** Every `App` callback as a no-op; extend it and override what you need. */
abstract class BaseApp implements App
{
    public function onWorkerStart(Ctx $ctx, ?string $handoff): void
    {
    }

    public function onWorkerStop(Ctx $ctx): ?string
    {
        return null;
    }

    public function onHandshake(Ctx $ctx, Handshake $handshake): Decision
    {
        return Decision::accept();
    }

    public function onOpen(Ctx $ctx, Open $open): void
    {
    }

    public function onMessage(Ctx $ctx, Message $message): void
    {
    }

    public function onClose(Ctx $ctx, Close $close): void
    {
    }

    public function onJoin(Ctx $ctx, Join $join): void
    {
    }

    public function onLeave(Ctx $ctx, Leave $leave): void
    {
    }

    public function onTask(Ctx $ctx, Task $task): string
    {
        return '';
    }

    public function onFinish(Ctx $ctx, Finish $finish): void
    {
    }
}
