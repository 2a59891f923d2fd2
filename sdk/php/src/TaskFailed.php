<?php

declare(strict_types=1);

namespace Hotsock;

/** The task handler failed; the message is its error. */
final class TaskFailed extends HotsockException
{
}
