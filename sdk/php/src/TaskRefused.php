<?php

declare(strict_types=1);

namespace Hotsock;

/** `Ctx::task()` was refused (queue full, no task workers); the message is the server's reason. */
final class TaskRefused extends HotsockException
{
}
